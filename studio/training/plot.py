"""The loss curve as a small PNG-ready image, drawn with Pillow (no plotting library needed).

Raw per-step losses of diffusion training jump around with the random timestep, so the curve also
shows a running mean, which is what tells the user whether training is going anywhere.
"""

from __future__ import annotations

from PIL import Image, ImageDraw

WIDTH, HEIGHT, MARGIN = 480, 220, 36


def loss_curve(losses: list[tuple[int, float]], *, window: int = 20) -> Image.Image:
    """Light grey: each step's loss; blue: the mean of the last `window` steps."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([MARGIN, 8, WIDTH - 8, HEIGHT - MARGIN + 8], outline=(200, 200, 200))
    if not losses:
        draw.text((MARGIN + 8, HEIGHT // 2), "The loss curve appears here during training.", fill=(120, 120, 120))
        return image
    steps = [s for s, _ in losses]
    values = [v for _, v in losses]
    smooth = [
        sum(values[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(values))
    ]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    first, last = steps[0], max(steps[-1], steps[0] + 1)

    def point(step: int, value: float) -> tuple[float, float]:
        x = MARGIN + (step - first) / (last - first) * (WIDTH - 8 - MARGIN)
        y = 8 + (1 - (value - low) / span) * (HEIGHT - MARGIN)
        return x, y

    for series, color in ((values, (190, 190, 190)), (smooth, (37, 99, 235))):
        points = [point(s, v) for s, v in zip(steps, series)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        else:
            draw.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2], fill=color)
    # Value labels on the right: the top-left corner is where the UI overlays the plot's title.
    draw.text((WIDTH - 60, 12), f"max {high:.3f}", fill=(80, 80, 80))
    draw.text((WIDTH - 60, HEIGHT - MARGIN - 6), f"min {low:.3f}", fill=(80, 80, 80))
    draw.text((MARGIN, HEIGHT - MARGIN + 12), f"step {first}", fill=(80, 80, 80))
    draw.text((WIDTH - 90, HEIGHT - MARGIN + 12), f"step {steps[-1]}", fill=(80, 80, 80))
    draw.text((WIDTH // 2 - 60, HEIGHT - MARGIN + 12), f"loss (mean of {window})", fill=(37, 99, 235))
    return image
