#!/usr/bin/env bash
# Threads beside a busy neighbour (issue 16 section 2; papers/threads.md): `ccoe bench` tokens/s
# of each shape at --threads 1, 2 (or the CPU count) and auto, on the machine as it is ("quiet")
# and beside one busy process this script starts and stops itself (a spinning shell loop,
# pinned to nothing), in interleaved rounds (median of each). Prints the table and the ratios
# the issue targets:
#   busy:  auto / max(1 thread, N threads)  >= 0.90
#   quiet: auto / N threads                 >= 0.97
#
#   scripts/bench_contention.sh [CCOE_BIN]      (default: build/ccoe)
# Environment: SHAPES ("small tiny-wide"), ROUNDS (3), STEPS_small (60), STEPS_tiny_wide (15),
# STEPS_gpt2_124m (4), VARIANTS=1 also times N threads under OMP_WAIT_POLICY=passive and
# GOMP_SPINCOUNT=1000 beside the neighbour (libgomp's spin policy, for the record).
# The auto runs' first probe happens in the bench's warm-up; the measured steps include any
# later probe (every 10 s, backing off to 160 s, while on fewer threads: threads.h), so
# runs of tens of seconds show its cost. Only meaningful on an otherwise idle machine: the
# load average is printed before and after.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
ccoe=${1:-$here/build/ccoe}
[ -x "$ccoe" ] || { echo "no ccoe binary at $ccoe: build first (README) or pass its path" >&2; exit 2; }
shapes=${SHAPES:-small tiny-wide}
rounds=${ROUNDS:-3}
ncpu=$(nproc)
[ "$ncpu" -ge 2 ] || { echo "one CPU: nothing to compare" >&2; exit 2; }
counts="1 $ncpu auto"
[ "${VARIANTS:-0}" = 1 ] && busy_extra="passive spin1000" || busy_extra=""

neighbour=""
stop_neighbour() {
    if [ -n "$neighbour" ]; then
        kill "$neighbour" 2>/dev/null || true
        wait "$neighbour" 2>/dev/null || true
        neighbour=""
    fi
}
trap stop_neighbour EXIT INT TERM
start_neighbour() {
    bash -c 'while :; do :; done' &
    neighbour=$!
    sleep 0.5
}

# one bench run: prints its tok/s (and keeps the row's last column for the log)
tmp=$(mktemp -d)
trap 'stop_neighbour; rm -rf "$tmp"' EXIT
bench() { # SHAPE THREADS [ENV...]
    local shape=$1 th=$2 steps_var
    shift 2
    steps_var="STEPS_${shape//-/_}"
    local steps=${!steps_var:-}
    case $shape in small) steps=${steps:-60} ;; tiny-wide) steps=${steps:-15} ;; *) steps=${steps:-4} ;; esac
    local out
    out=$(env "$@" "$ccoe" bench --shape "$shape" --threads "$th" --steps "$steps")
    local row
    row=$(grep "^| $shape " <<<"$out")
    echo "$cond $row" >> "$tmp/rows"
    awk -F'|' '{gsub(/ /, "", $5); print $5}' <<<"$row"
}

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $ncpu CPUs"
echo "before: $(uptime)"
# results: $tmp/<cond>_<shape>_<count> holds one tok/s per round
for r in $(seq 1 "$rounds"); do
    for cond in quiet busy; do
        [ "$cond" = busy ] && start_neighbour
        for shape in $shapes; do
            for th in $counts; do
                bench "$shape" "$th" >> "$tmp/${cond}_${shape}_${th}"
            done
            if [ "$cond" = busy ]; then
                for v in $busy_extra; do
                    case $v in
                    passive) bench "$shape" "$ncpu" OMP_WAIT_POLICY=passive >> "$tmp/${cond}_${shape}_$v" ;;
                    spin1000) bench "$shape" "$ncpu" GOMP_SPINCOUNT=1000 >> "$tmp/${cond}_${shape}_$v" ;;
                    esac
                done
            fi
        done
        stop_neighbour
    done
    echo "round $r of $rounds done: $(uptime)" >&2
done
echo "after:  $(uptime)"

median() { sort -g "$1" | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
echo
echo "tokens/s, median of $rounds interleaved rounds (ccoe bench, fp32):"
echo
printf '| shape | machine | 1 thread | %s threads | auto |' "$ncpu"
for v in $busy_extra; do printf ' %s threads %s |' "$ncpu" "$v"; done
printf ' auto / best fixed | auto / %s threads | target |\n' "$ncpu"
printf '|---|---|---:|---:|---:|'
for v in $busy_extra; do printf -- '---:|'; done
printf -- '---:|---:|---|\n'
status=0
for shape in $shapes; do
    for cond in quiet busy; do
        one=$(median "$tmp/${cond}_${shape}_1")
        all=$(median "$tmp/${cond}_${shape}_${ncpu}")
        au=$(median "$tmp/${cond}_${shape}_auto")
        extra=""
        if [ "$cond" = busy ]; then
            for v in $busy_extra; do extra="$extra $(median "$tmp/${cond}_${shape}_$v") |"; done
        else
            for v in $busy_extra; do extra="$extra - |"; done
        fi
        best=$(awk -v a="$one" -v b="$all" 'BEGIN {print (a > b) ? a : b}')
        r_best=$(awk -v x="$au" -v b="$best" 'BEGIN {printf "%.3f", x / b}')
        r_all=$(awk -v x="$au" -v b="$all" 'BEGIN {printf "%.3f", x / b}')
        if [ "$cond" = busy ]; then
            target=">= 0.90 of best"
            ok=$(awk -v r="$r_best" 'BEGIN {print (r >= 0.90) ? "met" : "MISSED"}')
        else
            target=">= 0.97 of $ncpu threads"
            ok=$(awk -v r="$r_all" 'BEGIN {print (r >= 0.97) ? "met" : "MISSED"}')
        fi
        [ "$ok" = met ] || status=1
        label=$cond
        [ "$cond" = busy ] && label="beside 1 busy process"
        printf '| %s | %s | %.0f | %.0f | %.0f |%s %s | %s | %s: %s |\n' "$shape" "$label" "$one" \
            "$all" "$au" "$extra" "$r_best" "$r_all" "$target" "$ok"
    done
done
echo
echo "auto runs (measured steps per count, last round):"
grep "auto " "$tmp/rows" | tail -n $((2 * $(wc -w <<<"$shapes"))) | awk -F'|' '{print "  " $1 "|" $2 "|" $10}'
exit $status
