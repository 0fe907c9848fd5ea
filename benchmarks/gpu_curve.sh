#!/usr/bin/env bash
# The learning curve on the GPU lending machine, in as many calls as its runs need.
#
#   cp -r ../shared/real-app/ai-training real-app-carry/   # here, once (keep it out of git: .git/info/exclude)
#   run carry=["real-app-carry"] command="bash benchmarks/gpu_curve.sh [SECONDS]"   (after gpu-carry's pieces are staged)
#
# The first call starts benchmarks/learning_curve.py in the background (the default setting at
# 32/64/128/all scenarios × 3 seeds, 6 arms at a time, then tools in the prompt at all × 3 seeds);
# every call then waits up to SECONDS (default 540: under the 600 s a call may run), copies each
# finished arm to $OUT/arms/ and prints the log's tail. Call it again within ~30 s (the machine is
# given back when idle) until it says "curve done"; a finished arm is never run again, so a call
# that lands on a fresh machine only costs the arms in flight. Bring $OUT/arms/* into
# docs/real-model/learning-curve/arms/ and run `learning_curve.py --summarise` here. The default
# arms keep their shipped adapter (git ignores them): `converters/fuse_to_gguf.py ADAPTER --base
# gemma3-270m --quant Q8_0` then `benchmarks/grammar_quality.py --model GGUF` measure the tuned
# GGUF with and without the tool grammar on this machine (the lending machine has no llama.cpp).
#
# Written after a session that lost half its device time: scripts run from the repository root
# with it on PYTHONPATH; the runner is watched by its PID (a `pgrep -f` of its name also matches
# the calling shell); the game's real files travel as real-app-carry/ when ../shared is absent.
set -u
cd "$(dirname "$0")/.."
[ -f /root/gpu-env ] && . /root/gpu-env
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
budget=${1:-540}
out=${OUT:-/tmp/gpu-curve-out}
if [ ! -d ../shared/real-app/ai-training ] && [ -d real-app-carry/ai-training ]; then
  mkdir -p ../shared/real-app && cp -r real-app-carry/ai-training ../shared/real-app/
fi
[ -d ../shared/real-app/ai-training ] || echo "note: the game's real files are not on this machine: that source is not scored"
pid_file=/root/gpu-curve.pid
if [ ! -f "$pid_file" ] || ! kill -0 "$(cat "$pid_file")" 2>/dev/null; then
  if [ -f /root/gpu-curve.done ]; then
    echo "curve done"
  else
    (
      python3 benchmarks/learning_curve.py --sizes 32,64,128,0 --seeds 0,1,2 --parallel 6 --arms /root/arms --out /root/curve \
        --keep-adapters
      python3 benchmarks/learning_curve.py --label tools --data tools_in_prompt=true --sizes 0 --seeds 0,1,2 \
        --parallel 3 --arms /root/arms --out /root/curve
      touch /root/gpu-curve.done
    ) > /root/gpu-curve.log 2>&1 &
    echo $! > "$pid_file"
    echo "started the curve (pid $(cat "$pid_file"))"
  fi
fi
deadline=$((SECONDS + budget))
while [ "$SECONDS" -lt "$deadline" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; do
  sleep 15
  mkdir -p "$out/arms" && cp -r /root/curve/arms/. "$out/arms/" 2>/dev/null
done
mkdir -p "$out/arms" && cp -r /root/curve/arms/. "$out/arms/" 2>/dev/null
grep -E "done in|failed|arms to run" /root/gpu-curve.log | tail -n 40
[ -f /root/gpu-curve.done ] && echo "curve done"
