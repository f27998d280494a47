"""Times a generation, image-to-image and inpainting on the same pipeline, and checks the pixels kept by inpainting.

    python -m benchmarks.edit_timing                       # the tiny random models, 128x128, 8 steps
    python -m benchmarks.edit_timing --models DIR --size 1024 --steps 28   # real models (a GPU)

Prints one line per case: steps run, best wall time of ``--repeat`` runs, and for inpainting how many pixels lie
beyond the feathered edge and the largest difference there from the source (0 means every one was kept).
"""

from __future__ import annotations

import argparse
import json
import time


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from core.conditioning.edit import outside
    from core.conditioning.masks import RoutingMask
    from core.engine import Engine
    from core.request import GenerationRequest

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="JSON lines instead of text")
    args = parser.parse_args(argv)

    side = args.size
    engine = Engine(args.models)
    source = Image.fromarray((np.random.RandomState(0).rand(side, side, 3) * 255).astype(np.uint8))
    mask = np.zeros((side, side), np.float32)
    mask[side // 4:side * 3 // 4, side * 5 // 16:side * 11 // 16] = 1
    region = RoutingMask.from_spec(mask)
    cases = {"generate": {}, "img2img 0.5": dict(source_image=source, strength=0.5),
             "img2img 0": dict(source_image=source, strength=0.0),
             "inpaint 1.0": dict(source_image=source, strength=1.0, inpaint_region=region)}

    def run(**edit):
        steps = []
        start = time.perf_counter()
        out = engine.generate(GenerationRequest("a cat", steps=args.steps, height=side, width=side, seed=0, **edit),
                              report=lambda fraction, message: ": step " in message and steps.append(message))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - start, len(steps), out

    run()  # warm-up (and the load)
    for name, kwargs in cases.items():
        runs = [run(**kwargs) for _ in range(args.repeat)]
        row = {"case": name, "steps": runs[0][1], "best_ms": round(min(r[0] for r in runs) * 1000, 1)}
        if "inpaint_region" in kwargs:
            keep = outside(region, side, side)
            diff = np.abs(np.asarray(runs[0][2].images[0], int) - np.asarray(source, int))[keep]
            row.update(kept_pixels=int(keep.sum()), pixels=side * side, max_diff_outside=int(diff.max()))
        print(json.dumps(row) if args.json else ", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
