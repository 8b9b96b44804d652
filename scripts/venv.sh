# Sourced by scripts/test and scripts/demo: the project's own virtualenv in .venv, made with the system
# python3 (Debian's is PEP 668 "externally managed": nothing is ever installed into it), then put first on
# PATH so python3, pip and the console scripts are the venv's.
# Usage: . scripts/venv.sh EXTRAS   (EXTRAS: "" for the package alone, "[dev]" with the test tools)

venv_root="$(pwd)/.venv"
if [ "$(id -u)" = 0 ]; then SUDO=(); else SUDO=(sudo); fi

apt_install() {
  echo "== installing $* from Debian's packages"
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "$@" >/dev/null
}

if [ ! -x "$venv_root/bin/python3" ] || ! "$venv_root/bin/python3" -c 'import sys' >/dev/null 2>&1; then
  base_python="${PYTHON:-$(command -v python3)}"
  echo "== creating the project virtualenv .venv with $base_python"
  rm -rf "$venv_root"
  if ! "$base_python" -m venv "$venv_root" >/dev/null 2>&1; then
    # Debian ships venv's pip bootstrap apart, in python3-venv (python3.X-venv)
    minor="$("$base_python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    apt_install "python${minor}-venv" || apt_install python3-venv
    rm -rf "$venv_root"
    "$base_python" -m venv "$venv_root"
  fi
fi
export VIRTUAL_ENV="$venv_root"
export PATH="$venv_root/bin:$PATH"
hash -r

venv_install() {
  # $1: what pip installs ("-e .[dev]" or ".")
  # An editable install follows the source by itself: it is redone only when pyproject.toml (the dependencies)
  # or what is asked changes, which the stamp records. pip takes a minute even when nothing is missing (the
  # isolated build environment is fetched again). A plain install copies the code, so it is always redone.
  local stamp="$venv_root/.installed" want=""
  case "$1" in
    -e*) want="$1 $(sha256sum pyproject.toml | cut -d' ' -f1)" ;;
  esac
  if [ -n "$want" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && python3 -c 'import sidecar' 2>/dev/null; then
    echo "== .venv already holds $1 for this pyproject.toml"
    return 0
  fi
  rm -f "$stamp"
  echo "== installing the package into .venv"
  local out pip_rc=0
  # shellcheck disable=SC2086
  out="$(python3 -m pip install -q --disable-pip-version-check $1 2>&1)" || pip_rc=$?
  if [ -n "$out" ]; then printf '%s\n' "$out" | grep -v "^WARNING: Location" || true; fi
  python3 -c 'import sidecar' || { echo "the package did not install into .venv" >&2; exit 1; }
  if [ -n "$want" ] && [ "$pip_rc" = 0 ]; then echo "$want" > "$stamp"; fi
}
