# Sourced by the benchmark scripts (bench.sh, busy_bench.sh, spin_bench.sh), which set
# IDLE_WAIT (seconds) first.

# cpu_busy: percent of all CPUs busy over the next second (we are idle meanwhile), i.e.
# the share other processes take.
cpu_busy() {
  local a b
  a=($(head -n1 /proc/stat)); sleep 1; b=($(head -n1 /proc/stat))
  awk -v u="$(( b[1]+b[2]+b[3]+b[6]+b[7]+b[8] - a[1]-a[2]-a[3]-a[6]-a[7]-a[8] ))" \
      -v i="$(( b[4]+b[5] - a[4]-a[5] ))" 'BEGIN { t = u + i; printf "%.0f\n", (t > 0 ? 100 * u / t : 0) }'
}

# wait_idle: waits (up to IDLE_WAIT seconds) until other processes use at most 10% of the
# CPUs; prints the last reading (percent).
wait_idle() {
  local b waited=0
  b=$(cpu_busy)
  while [ "$b" -gt 10 ] && [ "$waited" -lt "$IDLE_WAIT" ]; do
    sleep 4; waited=$((waited + 5)); b=$(cpu_busy)
  done
  echo "$b"
}
