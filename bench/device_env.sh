# Source this ON THE DEVICE MACHINE, from the repository root (docs/gpu.md): install the wheels carried in .whl
# (made here by bench/device_wheels.sh) into /tmp/site, put them and llamalab's source on the Python path, and
# say what the machine has. The image's own python3 holds torch, transformers and pytest.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || return 1
export PYTHONPATH="/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch, transformers, llamalab; print('torch', torch.__version__, 'transformers', \
transformers.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')" || return 1
