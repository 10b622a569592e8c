# Sourced by the make recipes: finds uv and fixes how it resolves Python.
UV_HOME="${KAP_UV_HOME:-$HOME/.local/share/kap-uv}"
if ! command -v uv >/dev/null && [ -x "$UV_HOME/bin/uv" ]; then
  export PATH="$UV_HOME/bin:$PATH"
fi
# Never fetch a Python build at run time: use the machine's python3 (>= 3.11).
export UV_PYTHON_DOWNLOADS=never
