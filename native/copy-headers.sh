#!/bin/sh
# Copies the llama.cpp and ggml headers of the pinned ollama module (go.mod)
# into native/include/, where cgo finds them. They are another project's
# files, regenerated from the pinned version and never committed; keeping
# them in the package tree (not CGO_CPPFLAGS) keeps Go's build cache warm,
# because the compiler flags of the llama.cpp packages never change.
set -eu
cd "$(dirname "$0")"
go=${GO:-go}
mod=github.com/ollama/ollama
dir=$($go list -m -f '{{.Dir}}' "$mod")
if [ -z "$dir" ] || [ ! -d "$dir" ]; then
	$go mod download "$mod"
	dir=$($go list -m -f '{{.Dir}}' "$mod")
fi
mkdir -p include
for h in llama/llama.cpp/include/llama.h \
	ml/backend/ggml/ggml/include/ggml.h \
	ml/backend/ggml/ggml/include/ggml-cpu.h \
	ml/backend/ggml/ggml/include/ggml-backend.h \
	ml/backend/ggml/ggml/include/ggml-alloc.h \
	ml/backend/ggml/ggml/include/ggml-opt.h; do
	dst=include/$(basename "$h")
	# Only rewrite a changed header, so an up-to-date tree is untouched.
	if ! cmp -s "$dir/$h" "$dst"; then
		install -m 0644 "$dir/$h" "$dst"
	fi
done
