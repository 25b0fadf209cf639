"""The README's pictures of faces in video: one frame of the annotated video and the timeline.

    python scripts/video_demo.py RUN_DIR [--out docs] [--work outputs/video_demo] [--frame 75]

Writes a 640x360 clip of two real faces passing each other (scripts/video_clips.py), runs ``lrfer-predict
RUN_DIR clip.mp4 --annotate annotated.mp4 --out faces.csv`` on it (all outputs under ``--work``), then
saves frame ``--frame`` of the annotated video as ``<out>/video_frame.png`` (128 colours, to stay small) and
copies the timeline to ``<out>/video_timeline.png``. Prints the command's summary line.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from video_clips import TWO_FACES, write_clip

from lrfer.cli import predict


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--work", type=Path, default=Path("outputs/video_demo"))
    parser.add_argument("--frame", type=int, default=75)
    args = parser.parse_args(argv)
    import cv2

    args.work.mkdir(parents=True, exist_ok=True)
    clip = write_clip(args.work / "clip.mp4", faces=TWO_FACES)
    annotated = args.work / "annotated.mp4"
    outputs = ["--annotate", str(annotated), "--out", str(args.work / "faces.csv")]
    predict.main([args.run_dir, str(clip), *outputs])
    capture = cv2.VideoCapture(str(annotated))
    capture.set(cv2.CAP_PROP_POS_FRAMES, args.frame)
    ok, frame = capture.read()
    if not ok:
        raise SystemExit(f"{annotated} has no frame {args.frame}")
    args.out.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    rgb = Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    rgb.quantize(colors=128).save(args.out / "video_frame.png", optimize=True)  # a palette PNG stays small
    shutil.copyfile(args.work / "faces_timeline.png", args.out / "video_timeline.png")
    print(f"-> {args.out / 'video_frame.png'}, {args.out / 'video_timeline.png'}")


if __name__ == "__main__":
    main()
