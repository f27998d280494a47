"""CPU timings of several characters on the tiny random models, as ratios within one run.

``python -m benchmarks.regional_timing`` times generations in each configuration (1, 2, 4, 8 characters in vertical
strips, each named in the prompt with a description; regional text on and off; and, for comparison, every
character attending from every image token as before per-region attention) and prints seconds per step divided
by the same run's seconds per step without characters. Tiny models: the figures show how the costs scale with the
number of characters here, not what a full-size model does on a GPU (see ``benchmarks.flops`` for that).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import contextmanager

from PIL import Image

from core.engine import Engine
from core.request import GenerationRequest

COLOURS = [(200, 40, 40), (40, 40, 200), (40, 160, 40), (200, 160, 40), (160, 40, 160), (40, 160, 160),
           (120, 120, 120), (240, 120, 60)]
WORDS = ["a red fox", "a blue robot", "a green frog", "a yellow bird", "a purple cat", "a teal fish", "a grey owl",
         "an orange bear"]


def characters(count: int):
    from core.conditioning.character import Character

    return [Character(Image.new("RGB", (48, 48), COLOURS[i]), name=f"C{i + 1}", mask=f"grid:1x{count}:{i + 1}",
                      description=WORDS[i]) for i in range(count)]


@contextmanager
def attending_everywhere():
    """Every character attends from every image token (the computation before per-region attention)."""
    import core.models.pipeline as pipeline

    reach = pipeline.mask_reach
    pipeline.mask_reach = lambda mask: None
    try:
        yield
    finally:
        pipeline.mask_reach = reach


def time_step(engine, count: int, regional: str, size: int, steps: int) -> float:
    """Seconds per step of one generation with ``count`` characters (latents only: the VAE decode is left out)."""
    chars = characters(count) if count else []
    prompt = " and ".join(f"[{c.name}]" for c in chars) + " walk down a pier" if chars else "a pier"
    start = time.perf_counter()
    engine.generate(GenerationRequest(prompt, characters=chars, steps=steps, height=size, width=size,
                                      max_sequence_length=256, seed=0, regional_text=regional),
                    pipeline_options={"output_type": "latent"})
    return (time.perf_counter() - start) / steps


CONFIGS = [(0, "off", False)] + [(n, mode, everywhere) for n in (1, 2, 4, 8)
                                 for mode, everywhere in (("off", False), ("on", False), ("off", True))]


def measure(engine, size: int, steps: int, repeats: int) -> dict:
    """Median seconds per step of each configuration; the configurations take turns in every round, so a machine
    that slows down mid-run slows them all alike. The first round warms the caches and is not counted."""
    times = {config: [] for config in CONFIGS}
    for round_ in range(repeats + 1):
        for count, mode, everywhere in CONFIGS:
            if everywhere:
                with attending_everywhere():
                    seconds = time_step(engine, count, mode, size, steps)
            else:
                seconds = time_step(engine, count, mode, size, steps)
            if round_:
                times[(count, mode, everywhere)].append(seconds)
    return {config: statistics.median(values) for config, values in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.regional_timing", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object per row")
    args = parser.parse_args(argv)

    engine = Engine("tiny", device="cpu")  # float32 on the CPU; loaded by the first (uncounted) round
    medians = measure(engine, args.size, args.steps, args.repeats)
    base = medians[(0, "off", False)]
    rows = [{"characters": n, "regional_off": medians[(n, "off", False)] / base,
             "regional_on": medians[(n, "on", False)] / base,
             "attending_everywhere_off": medians[(n, "off", True)] / base} for n in (1, 2, 4, 8)]
    if args.json:
        for row in rows:
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
        return
    print(f"Tiny models, {args.size}x{args.size}, {args.steps} steps, median of {args.repeats}; "
          f"no characters: {1000 * base:.1f} ms/step = 1.00")
    print(f"  {'characters':>10} {'regional off':>13} {'regional on':>12} {'off, attending everywhere':>26}")
    for row in rows:
        print(f"  {row['characters']:>10} {row['regional_off']:>13.2f} {row['regional_on']:>12.2f} "
              f"{row['attending_everywhere_off']:>26.2f}")


if __name__ == "__main__":
    main()
