# Studio on an NVIDIA GPU.
#   docker build -t studio .
#   docker run --gpus all -p 7860:7860 -e STUDIO_AUTH=me:secret -v $PWD/models:/app/models \
#       -v $PWD/loras:/app/loras -v $PWD/outputs:/app/outputs studio
# The container listens on all interfaces, so launch.py refuses to start without STUDIO_AUTH
# (or --insecure, if you put your own proxy with a login in front).
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    GRADIO_ANALYTICS_ENABLED=False HF_HUB_DISABLE_TELEMETRY=1
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 studio
WORKDIR /app
RUN python3 -m venv /opt/venv && chown -R studio /app /opt/venv
ENV PATH=/opt/venv/bin:$PATH HF_HOME=/home/studio/.cache/huggingface

USER studio
COPY --chown=studio requirements.txt .
RUN pip install -r requirements.txt
COPY --chown=studio . .

EXPOSE 7860
CMD ["python", "launch.py", "--host", "0.0.0.0", "--port", "7860"]
