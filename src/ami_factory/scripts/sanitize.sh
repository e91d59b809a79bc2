# shellcheck shell=sh
# AMI Factory generalize (Linux), the stack's SanitizeLinuxDocument (SSM): Linux has no sysprep, so this removes
# what makes the disk one machine's (host keys, machine-id, cloud-init state, shell history, temp
# files, logs) and shuts down. The shutdown is scheduled a minute out, so the command can report
# Success first. authorized_keys are left alone.
set -eu
rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
truncate -s 0 /etc/machine-id
rm -f /var/lib/dbus/machine-id
if command -v cloud-init >/dev/null 2>&1; then cloud-init clean --logs; else rm -rf /var/lib/cloud/instance /var/lib/cloud/instances; fi
rm -f /root/.bash_history /home/*/.bash_history
find /tmp /var/tmp -mindepth 1 -delete 2>/dev/null || true
find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \) -delete
find /var/log -type f -exec truncate -s 0 {} +
shutdown -h +1 'AMI Factory: generalized; shutting down so the image can be taken'
