#!/bin/bash
# Indexes an image folder on a Slurm cluster: an array job of N shards, then a merge job that runs when all
# of them succeeded. Prints the two job ids.
#
#   deploy/slurm/submit.sh --model M --images DIR --out DIR --shards N [--list image_data.csv]
#                          [--storage f16|int8] [--gpu] [--resubmit i[,j…]] [--tuwen PATH] [-- SBATCH_ARGS…]
#
# --out must be on a file system every node sees. --resubmit runs only those tasks again (after a failure or
# preemption: each resumes from its journal) and a new merge. Arguments after -- go to the array's sbatch
# (partition, time, memory, --cpus-per-task …).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
model= images= out= shards= list= storage=f16 gpu= only= tuwen=$(command -v tuwen || true)
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model=$2; shift 2 ;;
    --images) images=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --shards) shards=$2; shift 2 ;;
    --list) list=$2; shift 2 ;;
    --storage) storage=$2; shift 2 ;;
    --gpu) gpu=1; shift ;;
    --resubmit) only=$2; shift 2 ;;
    --tuwen) tuwen=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "submit.sh: unknown argument $1 (see the comment at the top)" >&2; exit 2 ;;
  esac
done
for v in model images out shards; do
  if [ -z "${!v}" ]; then echo "submit.sh: --$v is required" >&2; exit 2; fi
done
if ! [[ $shards =~ ^[1-9][0-9]*$ ]]; then echo "submit.sh: --shards must be a positive number" >&2; exit 2; fi
if [ -z "$tuwen" ]; then echo "submit.sh: no tuwen on PATH: pass --tuwen PATH" >&2; exit 2; fi
abs() { (cd "$(dirname "$1")" && echo "$(pwd)/$(basename "$1")"); }
mkdir -p "$out"
export TUWEN_MODEL=$(abs "$model") TUWEN_IMAGES=$(abs "$images") TUWEN_OUT=$(abs "$out") TUWEN_SHARDS=$shards
export TUWEN_STORAGE=$storage TUWEN_BIN=$(abs "$tuwen") TUWEN_LIST=${list:+$(abs "$list")}
export TUWEN_BACKEND=${gpu:+gpu}
array=${only:-0-$((shards - 1))}
gres=()
if [ -n "$gpu" ]; then gres=(--gres=gpu:1); fi
array_job=$(sbatch --parsable --chdir "$TUWEN_OUT" --export=ALL --array="$array" "${gres[@]}" "${extra[@]}" \
  "$here/index-array.sbatch")
array_job=${array_job%%;*}
# kill-on-invalid-dep: when a task fails the merge is cancelled, not left pending forever.
merge_job=$(sbatch --parsable --chdir "$TUWEN_OUT" --export=ALL --dependency="afterok:$array_job" \
  --kill-on-invalid-dep=yes "$here/merge.sbatch")
merge_job=${merge_job%%;*}
echo "array $array_job"
echo "merge $merge_job"
