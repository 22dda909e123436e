#!/bin/sh
# The packaged unit under a real systemd: run by imagegate-check.service in a guest whose PID 1
# is Debian's systemd, with the unit, config and policy installed where the Debian package puts
# them and containerd at its default paths. Drives imagegate.service through systemctl as an
# operator would and prints one line per check, then "systemd: N passed, M failed".
# (cargo xtask vm-test --kernel 6.12 --suite systemd)

passed=0
failed=0
check() {
    name=$1
    shift
    if "$@"; then
        passed=$((passed + 1))
        echo "check: ok: $name"
    else
        failed=$((failed + 1))
        echo "check: FAILED: $name"
    fi
}
prop() { systemctl show -p "$1" --value imagegate.service; }
# Milliseconds of uptime (the guest's clock; /proc/uptime has two decimals).
now_ms() {
    read -r up _ </proc/uptime
    frac=${up#*.}
    echo $((${up%.*} * 1000 + ${frac#0} * 10))
}
# wait_for SECONDS COMMAND...: polls every 0.1 s until COMMAND succeeds or SECONDS pass; says
# how long it took in $waited.
wait_for() {
    begin=$(now_ms)
    deadline=$((begin + $1 * 1000))
    shift
    while true; do
        if "$@"; then
            waited="$(($(now_ms) - begin)) ms"
            return 0
        fi
        [ "$(now_ms)" -lt $deadline ] || break
        usleep 100000
    done
    waited="more than $(($(now_ms) - begin)) ms"
    return 1
}
finish() {
    if [ $failed -gt 0 ]; then
        echo "check: the daemon's journal:"
        journalctl -u imagegate.service -o cat --no-pager | tail -n 40
        systemctl stop imagegate.service
    fi
    kill "$containerd" 2>/dev/null
    echo "systemd: $passed passed, $failed failed"
    sync
    if [ $failed -eq 0 ]; then status=0; else status=1; fi
    echo "IMAGEGATE-GUEST-EXIT $status"
    poweroff -f
}

active() { [ "$(prop ActiveState)" = active ] && [ "$(prop SubState)" = running ]; }
restarted_since() { [ "$(prop NRestarts)" -gt "$1" ] && active; }
status_says() { imagegate status 2>/dev/null | tr -d ' \n' | grep -q "$1"; }

# The backend the daemon must choose by itself: bpf-lsm, or fanotify when the kernel was booted
# without bpf in lsm= (from the kernel command line the harness set).
backend=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^imagegate.expect_backend=//p')
bpf() { [ "$backend" = bpf-lsm ]; }
echo "check: systemd $(systemctl --version | head -n 1), kernel $(uname -r), lsm $(cat /sys/kernel/security/lsm), expecting $backend"

# containerd at its default root and socket: what /etc/imagegate/imagegate.toml names.
containerd >/run/containerd.log 2>&1 &
containerd=$!
if ! wait_for 60 [ -S /run/containerd/containerd.sock ]; then
    echo "check: containerd did not start:"
    tail -n 20 /run/containerd.log
    failed=$((failed + 1))
    finish
fi

# An image layer no verified image vouches for, in the snapshotter's scope, mounted as a
# container root would be; and the same binary outside the scope.
snapshots=/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots
mkdir -p "$snapshots/9999/fs/bin" /run/check-root /run/empty-layer /run/host
cp /bin/busybox "$snapshots/9999/fs/bin/busybox"
cp /bin/busybox /run/host/busybox
mount -t overlay overlay -o "lowerdir=$snapshots/9999/fs:/run/empty-layer" /run/check-root
layer_exec_denied() {
    out=$(/run/check-root/bin/busybox true 2>&1)
    code=$?
    [ $code -ne 0 ] && case "$out" in *"not permitted"*) true ;; *) false ;; esac
}
host_exec_runs() { /run/host/busybox true; }

# 1. Type=notify: `systemctl start` returns once the daemon said READY=1, i.e. after the
#    backend's self-test and the first reconciliation.
started=$(now_ms)
check "systemctl start imagegate succeeds" systemctl start imagegate.service
echo "check: systemctl start took $(($(now_ms) - started)) ms"
check "the unit is active (running) when start returns" active
if [ $failed -gt 0 ]; then
    echo "check: FAILED: the daemon does not run under the unit; the rest cannot run"
    failed=$((failed + 1))
    finish
fi
check "the status socket answers at once, naming the $backend backend" \
    status_says "\"backend\":\"$backend\""
check "an exec from an unverified layer is denied" layer_exec_denied
denial_in_journal() {
    journalctl -u imagegate.service -o cat --no-pager |
        grep '"verdict":"denied"' | grep -q '"reason":"unverified_layer"'
}
check "the denial's event is in the journal" wait_for 10 denial_in_journal
check "the same binary outside the scope runs" host_exec_runs

# 2. The sandbox is the one the unit declares: the five capabilities and nothing else
#    (CAP_DAC_READ_SEARCH 2, CAP_SYS_PTRACE 19, CAP_SYS_ADMIN 21, CAP_PERFMON 38, CAP_BPF 39),
#    no new privileges,
#    a seccomp filter.
pid=$(prop MainPID)
check "effective capabilities are exactly the unit's" \
    grep -q "^CapEff:[[:space:]]*000000c000280004$" "/proc/$pid/status"
check "bounding set is exactly the unit's" \
    grep -q "^CapBnd:[[:space:]]*000000c000280004$" "/proc/$pid/status"
check "no new privileges" grep -q "^NoNewPrivs:[[:space:]]*1$" "/proc/$pid/status"
check "a seccomp filter is installed" grep -q "^Seccomp:[[:space:]]*2$" "/proc/$pid/status"
bpf && check "the programs are pinned" [ -e /sys/fs/bpf/imagegate ]
probe_ran() {
    journalctl -u imagegate.service -o cat --no-pager |
        grep '"fanotify backend started"' | grep -q '"strategy_chosen_by":"probe: '
}
bpf || check "the fanotify strategy probe ran inside the sandbox" probe_ran

# 3. Restart=always: a killed daemon comes back by itself; meanwhile BPF LSM's pinned programs
#    keep denying (fanotify's answers die with the daemon: docs/enforcement.md).
if [ "${pid:-0}" -le 1 ]; then
    echo "check: FAILED: the daemon has no main process; the rest cannot run"
    failed=$((failed + 1))
    finish
fi
restarts=$(prop NRestarts)
kill -KILL "$pid"
bpf && check "while the daemon is dead the pinned programs still deny" layer_exec_denied
check "a killed daemon is restarted" wait_for 60 restarted_since "$restarts"
echo "check: killed daemon active again after $waited"
check "the restarted daemon is a new process" [ "$(prop MainPID)" != "$pid" ]
check "the restarted daemon denies" layer_exec_denied

# 4. The watchdog, with its period shortened by a drop-in so a test can wait for it: the
#    daemon's pings keep a healthy daemon alive, and a daemon that stops answering is killed
#    and restarted.
mkdir -p /run/systemd/system/imagegate.service.d
printf '[Service]\nWatchdogSec=4s\nTimeoutAbortSec=2s\n' \
    >/run/systemd/system/imagegate.service.d/50-check-watchdog.conf
systemctl daemon-reload
check "systemctl restart with a 4 s watchdog succeeds" systemctl restart imagegate.service
restarts=$(prop NRestarts)
sleep 12
check "a pinging daemon outlives three watchdog periods" \
    [ "$(prop NRestarts)" = "$restarts" -a "$(prop ActiveState)" = active ]
pid=$(prop MainPID)
[ "${pid:-0}" -gt 1 ] && kill -STOP "$pid"
check "a stopped daemon is restarted by the watchdog" wait_for 60 restarted_since "$restarts"
echo "check: stopped daemon replaced after $waited"
rm /run/systemd/system/imagegate.service.d/50-check-watchdog.conf
systemctl daemon-reload

# 5. Reload (SIGHUP re-reads the policy) keeps the same process running.
pid=$(prop MainPID)
check "systemctl reload succeeds" systemctl reload imagegate.service
usleep 500000
check "after reload the same daemon runs" [ "$(prop MainPID)" = "$pid" -a "$(prop ActiveState)" = active ]

# 6. Stop: a clean exit. BPF LSM's pins stay, so enforcement outlives the daemon; with fanotify
#    nothing is judged once the daemon is gone, as docs/enforcement.md says.
check "systemctl stop succeeds" systemctl stop imagegate.service
check "the daemon exited cleanly" [ "$(prop Result)" = success ]
if bpf; then
    check "after stop the pinned programs still deny" layer_exec_denied
else
    check "after stop (fanotify) execs are no longer judged" /run/check-root/bin/busybox true
fi
check "after stop host binaries still run" host_exec_runs

umount /run/check-root
finish
