"""A1111 prompt reading: what encoding a 150-token weighted prompt adds to a generation, full-size SD1.5.

Studio encodes prompts itself (`studio.generation.prompts.encode_prompts`: weights, 75-token chunks, BREAK,
prompt editing). This measures that encoding for a 150-token weighted prompt with a negative prompt (both padded
to two chunks, so four text-encoder passes) next to one generation of the same pipeline, in one run, in the
precision Studio picks on this machine. Random weights: the cost is the architecture's, not the picture's.
Goal: encoding adds under 2% to the generation.

    python bench/bench_prompts.py [--quick]
"""

from __future__ import annotations

from common import Row, interleaved_medians, main_for, ratio_row

WEIGHTED = (
    "(satellite image:1.2) of ((snowy mountains)), [clouds], glacier, ridge, (valley:0.8), river, forest, "
    "aerial view, high detail, (sharp focus:1.1), BREAK dramatic light, long shadows, alpine lakes, "
)
NEGATIVE = "(blurry:1.3), low quality, [jpeg artifacts]"


def run(quick: bool) -> list[Row]:
    import torch

    from studio.generation.prompts import count_tokens, counting_tokenizer, encode_prompts
    from studio.models.kinds import ModelKind
    from studio.models.manager import resolve_dtype
    from tests.builders import build_random_pipeline

    dtype = resolve_dtype("auto", torch.device("cpu"))
    pipe = build_random_pipeline(ModelKind.SD15, dtype)
    pipe.set_progress_bar_config(disable=True)
    prompt = WEIGHTED
    while count_tokens(prompt, counting_tokenizer())[0] < 150:
        prompt += "snow, rock, "
    size, steps = (256, 10) if quick else (512, 20)

    def encode():
        encode_prompts(pipe, sdxl=False, prompt=prompt, negative_prompt=NEGATIVE, steps=steps)

    def generate():
        generator = torch.Generator("cpu").manual_seed(0)
        pipe(
            "mountains",
            negative_prompt="blurry",
            num_inference_steps=steps,
            height=size,
            width=size,
            generator=generator,
            output_type="latent",
        )

    times = interleaved_medians({"encode": encode, "generate": generate}, repeat=1 if quick else 3)
    tokens = count_tokens(prompt, counting_tokenizer())[0]
    return [
        ratio_row(
            f"SD1.5 {size}px {steps} steps ({str(dtype).removeprefix('torch.')}): generation + encoding a "
            f"{tokens}-token weighted prompt vs generation",
            times["generate"] + times["encode"],
            times["generate"],
            "s",
            max_ratio=1.02,
            note=f"encoding {times['encode'] * 1000:.0f} ms",
        )
    ]


if __name__ == "__main__":
    main_for(run)
