"""`avatarbatch init`: starter files that validate once the user adds their media."""

from __future__ import annotations

from pathlib import Path

from avatarbatch.errors import UsageError

MANIFEST = """\
# avatarbatch manifest: one presenter, several languages.
# Put your files in media/, then:  avatarbatch validate avatarbatch.yaml
#                                  avatarbatch plan avatarbatch.yaml
#                                  avatarbatch run avatarbatch.yaml --sandbox   (a dry run)
version: 1

defaults:                         # every job inherits these; any job field may go here
  portrait: media/presenter.png   # JPEG or PNG, each side >= 300 px, aspect 1:2.5 to 2.5:1
  model: standard                 # standard ($0.044/s) or pro ($0.087/s)
  prompt: friendly presenter, steady framing, natural blinking
  output_format: MP4              # MP4, WEBM or MOV

output:
  dir: out                        # videos, state and reports go here (relative to this file)
  filename: "{id}.{ext}"          # may use {id}, {index}, {ext}, {n} and any var

# One job per language: host-en, host-es, ... Audio: MP3, WAV, M4A or AAC, 2-300 s, <= 5 MB.
matrix:
  id: host-{lang}
  audio: media/voices/{lang}.mp3
  vars:
    lang: [en, es]

# Single jobs can be listed too, and may override any default:
# jobs:
#   - id: hero-pro
#     model: pro
#     audio: media/voices/en.mp3
#     vars: {lang: en}

# Or keep rows in a spreadsheet: see rows.csv, and point at it with
# rows: rows.csv
"""

ROWS = """\
id,portrait,audio,model,prompt,output_format,vars.lang
host-en,media/presenter.png,media/voices/en.mp3,standard,friendly presenter,MP4,en
host-es,media/presenter.png,media/voices/es.mp3,standard,friendly presenter,MP4,es
"""


def write(folder: Path, *, force: bool = False) -> list[Path]:
    """Write avatarbatch.yaml, rows.csv and the media folders; refuses to overwrite."""
    files = {folder / "avatarbatch.yaml": MANIFEST, folder / "rows.csv": ROWS}
    existing = [path for path in files if path.exists()]
    if existing and not force:
        names = ", ".join(str(path) for path in existing)
        raise UsageError(f"{names} already exist; use --force to overwrite")
    try:
        (folder / "media" / "voices").mkdir(parents=True, exist_ok=True)
        for path, text in files.items():
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write the starter files into {folder}: {exc.strerror}") from None
    return list(files)
