#!/bin/sh
# One guest: the .deb installs and starts nodelet under systemd (Type=notify, watchdog), on
# cgroup v2 only; `systemctl restart` and `stop` leave pods running; cgroup v2 limits hold and an
# OOM kill is reported; an upgrade in place restarts no pod; removal leaves nothing running.
# Prints PASS/FAIL lines with evidence; exits non-zero if any check failed.
set -u
share=/mnt/share
failed=0
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; failed=1; }
now() { cut -d. -f1 /proc/uptime; }
# until_ok SECONDS COMMAND...: runs COMMAND every half second until it succeeds, for SECONDS at
# most (by the clock: under TCG one kubectl call takes a second or more).
until_ok() {
  end=$(( $(now) + $1 )); shift
  while [ "$(now)" -lt "$end" ]; do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  return 1
}
install -m 0755 $share/bin/kubectl /usr/local/bin/kubectl
# `k`: kubectl against the node's built-in API (a command, so `sh -c` in until_ok has it too).
printf '#!/bin/sh\nexec /usr/local/bin/kubectl --kubeconfig /etc/nodelet/kubeconfig "$@"\n' > /usr/local/bin/k
chmod 0755 /usr/local/bin/k
jp() { k get pod "$1" -o "jsonpath=$2" 2>/dev/null; }

echo "boot: $(cut -d' ' -f1 /proc/uptime) s since the kernel started"
[ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] && pass "cgroup v2 only (unified hierarchy)" || fail "cgroup: $(stat -fc %T /sys/fs/cgroup)"

# 6a. The package installs, enables and starts the service.
t0=$(cut -d' ' -f1 /proc/uptime)
if dpkg -i $share/nodelet.deb >/tmp/dpkg.log 2>&1; then pass "dpkg -i"; else fail "dpkg -i: $(tail -5 /tmp/dpkg.log)"; fi
systemctl is-enabled nodelet >/dev/null && pass "enabled" || fail "not enabled"
if until_ok 300 sh -c 'k get node "$(hostname)" -o jsonpath="{.status.conditions[?(@.type==\"Ready\")].status}" | grep -qx True'; then
  t1=$(cut -d' ' -f1 /proc/uptime)
  pass "Ready, $(echo "$t1 - $t0" | awk '{print $1 - $3}') s after dpkg -i ($t1 s after boot)"
else
  fail "never Ready: $(systemctl status nodelet --no-pager 2>&1 | tail -15)"
fi
[ "$(systemctl show -p Type --value nodelet)" = notify ] && pass "Type=notify, active: $(systemctl is-active nodelet)" || fail "type"
/usr/bin/nodelet image import $share/images/busybox >/dev/null && pass "image imported" || fail "image import"

# A pod under systemd's cgroup tree, with a limit.
cat > /tmp/sleeper.yaml <<'POD'
apiVersion: v1
kind: Pod
metadata: {name: sleeper}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: busybox
    imagePullPolicy: Never
    command: [sh, -c, "trap 'exit 0' TERM; while true; do sleep 1; done"]
    resources: {limits: {memory: 64Mi, cpu: 250m}}
POD
k create -f /tmp/sleeper.yaml >/dev/null
if until_ok 180 sh -c '[ "$(k get pod sleeper -o jsonpath={.status.phase})" = Running ]'; then
  # Start time as the pod reports it (creation to the container's start), to the second.
  created=$(jp sleeper '{.metadata.creationTimestamp}'); started=$(jp sleeper '{.status.containerStatuses[0].state.running.startedAt}')
  pass "pod Running: created $created, container started $started"
else fail "pod: $(k describe pod sleeper | tail -20)"; fi
sleep 1
pid=$(pgrep -f "while true; do sleep 1" | head -1)
cg=$(cut -d: -f3 /proc/$pid/cgroup)
mem=$(cat /sys/fs/cgroup$cg/memory.max 2>/dev/null)
cpu=$(cat /sys/fs/cgroup$cg/cpu.max 2>/dev/null)
if [ "$mem" = 67108864 ] && [ "$cpu" = "25000 100000" ]; then
  pass "v2 limits in $cg: memory.max $mem, cpu.max $cpu"
else
  fail "v2 limits in $cg: memory.max '$mem', cpu.max '$cpu'; the cgroup has: $(ls /sys/fs/cgroup$cg | tr '\n' ' ')"
  for d in / /kubepods "$(dirname "$cg")"; do
    echo "  $d: controllers '$(cat /sys/fs/cgroup$d/cgroup.controllers)' subtree '$(cat /sys/fs/cgroup$d/cgroup.subtree_control)'"
  done
  echo "  the shim: $(cat /proc/$(pgrep -f nodelet-shim | head -1)/cgroup)"
  journalctl -u nodelet --no-pager | grep -i -E 'cgroup|warn|error' | tail -10
fi

# 3. Restarting or stopping the service touches no pod.
restarts() { jp sleeper '{.status.containerStatuses[0].restartCount}'; }
r0=$(restarts)
systemctl restart nodelet
until_ok 60 sh -c '[ "$(systemctl is-active nodelet)" = active ] && k get pod sleeper >/dev/null' || true
sleep 2
if kill -0 "$pid" 2>/dev/null && [ "$(restarts)" = "$r0" ]; then pass "systemctl restart: container pid $pid and restartCount $r0 unchanged"; else fail "restart: pid $pid alive? $(kill -0 $pid 2>&1), restarts $r0 -> $(restarts)"; fi
systemctl stop nodelet
sleep 2
if kill -0 "$pid" 2>/dev/null; then pass "systemctl stop: container pid $pid still running"; else fail "stop killed the pod"; fi
systemctl start nodelet
until_ok 60 sh -c 'k get pod sleeper >/dev/null' || true

# 5. An OOM kill on v2 is reported as kubelet reports it.
cat > /tmp/hog.yaml <<'POD'
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: busybox
    imagePullPolicy: Never
    command: [sh, -c, "head -c 200m /dev/zero | tail"]
    resources: {limits: {memory: 32Mi}}
POD
k create -f /tmp/hog.yaml >/dev/null
if until_ok 180 sh -c '[ "$(k get pod hog -o jsonpath={.status.containerStatuses[0].state.terminated.reason})" = OOMKilled ]'; then
  pass "OOMKilled on v2, exit code $(jp hog '{.status.containerStatuses[0].state.terminated.exitCode}')"
else
  fail "hog: $(k get pod hog -o jsonpath='{.status.containerStatuses[0].state}')"
fi
k delete pod hog --wait=false >/dev/null

# 6b. An upgrade in place (the package again) restarts the agent only.
r0=$(restarts)
if dpkg -i $share/nodelet.deb >/tmp/dpkg2.log 2>&1; then pass "dpkg -i again (upgrade in place)"; else fail "upgrade: $(tail -5 /tmp/dpkg2.log)"; fi
until_ok 60 sh -c 'k get pod sleeper >/dev/null' || true
sleep 2
if kill -0 "$pid" 2>/dev/null && [ "$(restarts)" = "$r0" ]; then pass "upgrade: container pid $pid and restartCount unchanged"; else fail "upgrade restarted the pod"; fi

# 6c. Removal stops the agent and drains the node; purge removes its state.
dpkg -r nodelet >/tmp/dpkg3.log 2>&1 && pass "dpkg -r" || fail "dpkg -r: $(tail -5 /tmp/dpkg3.log)"
left=$(pgrep -f 'nodelet|while true; do sleep 1' | tr '\n' ' ')
[ -z "$left" ] && pass "nothing of nodelet or its pods runs after removal" || fail "left running: $left $(ps -o pid,args -p $left 2>/dev/null)"
dpkg -P nodelet >/dev/null 2>&1
[ ! -e /var/lib/nodelet ] && [ ! -e /usr/bin/nodelet ] && pass "purge: /var/lib/nodelet and the binaries gone" || fail "purge left $(ls -d /var/lib/nodelet /usr/bin/nodelet 2>/dev/null)"
exit $failed
