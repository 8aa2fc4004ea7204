#!/usr/bin/env bash
# Install what the pipeline needs: Debian packages (when root) and the Python virtualenv.
# Usage: scripts/setup.sh [VENV_DIR]     (default .venv)
set -euo pipefail
venv=${1:-.venv}
cd "$(dirname "$0")/.."
stamp="$venv/.installed"
want=$(sha256sum requirements.txt | cut -d' ' -f1)
installed() { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; }

# Two set-ups at once (two `make demo` in one tree) would install into one virtualenv
# together: the second waits for the first here, then finds the stamp and does nothing.
if command -v flock >/dev/null; then
  mkdir -p build
  exec 9>build/setup.lock
  if ! flock -n 9; then
    echo "setup: another set-up of this tree is running; waiting for it"
    flock 9
  fi
fi

# Fashion-MNIST is the offline default data set; LaTeX typesets the figures; poppler reads PDFs.
system_packages=(dataset-fashion-mnist texlive-latex-base texlive-latex-extra texlive-pictures
                 texlive-luatex texlive-fonts-recommended latexmk poppler-utils make)
missing=()
if command -v dpkg-query >/dev/null; then
  for p in "${system_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -q >/dev/null &&
           apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }; then
      echo "setup: warning: apt-get could not install ${missing[*]}; going on without them" >&2
    fi
  else
    echo "setup: warning: missing system packages: ${missing[*]}" >&2
    echo "setup:   install them with: sudo apt-get install ${missing[*]}" >&2
    echo "setup:   (without LaTeX, figures use matplotlib's own PDF; without" \
         "dataset-fashion-mnist, the offline demo needs Fashion-MNIST under \$DATA_ROOT)" >&2
  fi
fi

installed && { touch "$stamp"; exit 0; }   # Make compares its mtime with this script
command -v python3 >/dev/null || { echo "setup: error: python3 is needed (3.11)" >&2; exit 1; }
echo "setup: creating $venv and installing requirements.txt (about 2 minutes)"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
"$venv/bin/pip" install -q -r requirements.txt
echo "$want" > "$stamp"
