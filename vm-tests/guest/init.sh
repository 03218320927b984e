#!/bin/busybox sh
# /init of the vm-tests initramfs: load the virtio and FUSE modules, mount
# the virtio-fs tag at /mnt, run /workload.sh on it, unmount, power off.
# Every line meant for the host starts with VMTEST_.
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /mnt /tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmp /tmp
arg() { tr ' ' '\n' </proc/cmdline | sed -n "s/^vmtest\.$1=//p" | head -1; }
# busybox insmod does not read /proc/cmdline: pass virtio_mmio.device=...
# (microvm without ACPI) on by hand.
mmio=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^virtio_mmio\.\(device=.*\)/\1/p' | tr '\n' ' ')
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_mmio fuse virtiofs; do
    args=""
    [ $m = virtio_mmio ] && args="$mmio"
    insmod /lib/modules/$m.ko $args || echo "VMTEST_FAIL insmod $m"
done
tag=$(arg tag)
i=0
while [ $i -lt 50 ]; do
    mount -t virtiofs "$tag" /mnt 2>/dev/null && break
    i=$((i + 1))
    usleep 100000
done
if grep -q " /mnt virtiofs " /proc/mounts; then
    echo "VMTEST_MOUNTED $tag"
    sh /workload.sh /mnt "$(arg n)" "$(arg workers)"
    cd /
    umount /mnt || echo "VMTEST_FAIL umount"
    echo "VMTEST_DONE"
else
    echo "VMTEST_FAIL mount -t virtiofs $tag /mnt"
    dmesg | tail -20
fi
poweroff -f
