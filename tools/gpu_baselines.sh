#!/usr/bin/env bash
# One device call: train the CIFAR-10 baselines of models/ on the GPU machine, side by side.
# Run from the repo root with the packed CIFAR-10 in .data/cifar10 (carried). Writes into $OUT.
set -u
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 models/train_cifar.py --data .data/cifar10 --model resnet20 --time-budget ${RESNET_BUDGET:-220} \
    --out "$OUT/resnet20" > "$OUT/resnet20.log" 2>&1 &
r=$!
python3 models/train_cifar.py --data .data/cifar10 --model vgg16 --time-budget ${VGG_BUDGET:-220} \
    --out /tmp/vgg16 > "$OUT/vgg16.log" 2>&1 &
v=$!
wait $r; echo "resnet20 exit $?"; tail -3 "$OUT/resnet20.log"
wait $v; echo "vgg16 exit $?"; tail -3 "$OUT/vgg16.log"
rm -f "$OUT/resnet20/resnet20.pt"
mkdir -p "$OUT/vgg16" && cp /tmp/vgg16/*.json "$OUT/vgg16/" 2>/dev/null
# VGG-16 is 60 MB in float32: bring its weights back as float16, in two parts under 16 MiB.
python3 - <<'PY'
import io, os, torch
sd = torch.load("/tmp/vgg16/vgg16.pt", map_location="cpu")
buf = io.BytesIO(); torch.save({k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}, buf)
data = buf.getvalue(); half = len(data) // 2 + 1
for i in range(2):
    open(os.path.join(os.environ["OUT"], "vgg16", f"vgg16.fp16.pt.part{i}"), "wb").write(data[i*half:(i+1)*half])
print("vgg16 fp16 bytes", len(data))
PY
ls -la "$OUT" "$OUT"/*
