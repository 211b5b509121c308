#!/bin/busybox sh
# /init of the nested guest (L2) of the hypervisor tier; scripts/hypervisor-tests puts
# it in L2's initramfs with static busybox, the modules (modules/order) and harness.env.
# It loads virtio, vsock and 9p, mounts L1's root read-only over 9p, and runs the test
# harness there (this machine's Python and hvsock) until it exits; then powers off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "l2: kernel up after $(cut -d' ' -f1 /proc/uptime) s"
for mod in $(cat /modules/order); do
    insmod "/modules/$mod.ko" || echo "l2: FAILED: insmod $mod"
done
. /harness.env
# cache=loose: L2 only reads this tree, and re-fetching every lookup through two
# layers of 9p is what makes Python start slowly here.
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 root /newroot; then
    echo "l2: FAILED: could not mount L1's root over 9p"
    poweroff -f
fi
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
# A writable /tmp for the services' files (the project and its venv are not under it).
mount -t tmpfs tmp /newroot/tmp
echo "l2: root mounted after $(cut -d' ' -f1 /proc/uptime) s; starting the harness"
chroot /newroot /bin/sh -c 'cd "$1" && exec env -i PATH=/usr/local/bin:/usr/bin:/bin \
    HOME=/tmp PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$1/src:$1" \
    "$2" -S -m tests.hypervisor.guest.harness' harness "$PROJECT" "$PYTHON"
echo "l2: the harness exited with status $?"
poweroff -f
