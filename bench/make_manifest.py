"""Write a large CSV manifest that reuses a few media files, for scale benchmarks.

    python bench/make_manifest.py --rows 10000 --out bench/results/big10k

The folder gets copies of the demo portrait and voices, and `manifest.csv` with one row per
job cycling through them: the shape of a big localization run (few inputs, many rows).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

DEMO_MEDIA = Path(__file__).resolve().parent.parent / "manifests" / "media"
LANGS = ("en", "es", "de", "fr", "it", "pt")


def write_manifest(rows: int, out: Path) -> Path:
    """Create `out/manifest.csv` with `rows` jobs and the media it names; returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(DEMO_MEDIA, out / "media", dirs_exist_ok=True)
    path = out / "manifest.csv"
    with path.open("w", encoding="utf-8") as handle:
        handle.write("id,portrait,audio,model,prompt,vars.lang,vars.batch\n")
        for i in range(rows):
            lang = LANGS[i % len(LANGS)]
            model = "pro" if i % 10 == 0 else "standard"
            handle.write(
                f"job-{i:06d},media/presenter.png,media/voices/{lang}.mp3,{model},"
                f"presenter take {i},{lang},b{i // 1000}\n"
            )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=Path("bench/results/big"))
    args = parser.parse_args()
    print(write_manifest(args.rows, args.out))


if __name__ == "__main__":
    main()
