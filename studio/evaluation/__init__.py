"""Reality check: how close does a model (with or without LoRAs) come to a folder of images?

features.py   CLIP image embeddings (the feature model, downloaded once) and the data folder's images
metrics.py    CMMD, KID on CLIP features, bootstrap intervals, the data set's own floor, nearest neighbours
requests.py   the frozen request dataclasses (evaluation, synthetic data export) and candidate parsing
runner.py     generate each candidate with the same seeds, score it, keep partial results on Stop
report.py     grids, the ranked table, the bar chart and results.json on disk
synthetic.py  export generated images as a Hugging Face imagefolder data set with metadata.jsonl
"""
