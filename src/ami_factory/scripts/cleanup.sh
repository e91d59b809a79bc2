# shellcheck shell=sh
# AMI Factory clean-up before imaging (Linux), the stack's CleanupLinuxDocument (SSM): temporary files and
# package caches. It says what it removed; nothing here may fail the run.
for dir in /tmp /var/tmp; do
  count=$(find "$dir" -mindepth 1 2>/dev/null | wc -l)
  find "$dir" -mindepth 1 -delete 2>/dev/null || true
  echo "$dir: removed $count entries"
done
if command -v dnf >/dev/null 2>&1; then dnf clean all; elif command -v yum >/dev/null 2>&1; then yum clean all; fi
if command -v apt-get >/dev/null 2>&1; then apt-get clean && echo "apt-get: package cache cleaned"; fi
if command -v zypper >/dev/null 2>&1; then zypper clean --all; fi
exit 0
