"""What AMI Factory runs on instances through SSM Run Command, per platform.

The emulator does not run these: tests assert the document, parameters and target that were sent.
"""

from __future__ import annotations

from typing import NamedTuple

from .models import Platform, WindowsOptions

# The emulator's world recognises the generalize command by this comment (it cannot run the script).
GENERALIZE_COMMENT = "ami-factory generalize"


class Command(NamedTuple):
    document: str
    parameters: dict[str, list[str]]


CLEANUP = {
    "windows": Command(
        "AWS-RunPowerShellScript",
        {
            "commands": [
                "$ErrorActionPreference = 'Continue'",
                'Remove-Item -Path "$env:TEMP\\*", "$env:windir\\Temp\\*" -Recurse -Force -ErrorAction SilentlyContinue',
                "Clear-RecycleBin -Force -ErrorAction SilentlyContinue",
                "exit 0",
            ]
        },
    ),
    "linux": Command(
        "AWS-RunShellScript",
        {
            "commands": [
                "find /tmp /var/tmp -mindepth 1 -delete 2>/dev/null || true",
                "if command -v dnf >/dev/null 2>&1; then dnf clean all; elif command -v yum >/dev/null 2>&1; then yum clean all; fi",
                "if command -v apt-get >/dev/null 2>&1; then apt-get clean; fi",
                "if command -v zypper >/dev/null 2>&1; then zypper clean --all; fi",
            ]
        },
    ),
}


def cleanup_command(platform: Platform) -> Command:
    return CLEANUP[platform]


# Sysprep through whichever launch agent the instance has: EC2Launch v2 (Windows Server 2016 and
# later), EC2Launch v1 (2016/2019), EC2Config (2012 R2 and older). Every check that can fail runs
# before sysprep and exits non-zero, so a failed preparation is a Failed command on a running
# instance, never a shut-down instance that looks generalized.
WINDOWS_SYSPREP = r"""
$ErrorActionPreference = 'Stop'
$password = $null
if ($passwordParameter) {
  $password = (Get-SSMParameterValue -Names $passwordParameter -WithDecryption $true).Parameters[0].Value
  if (-not $password) { Write-Error "cannot read SecureString ${passwordParameter}: the instance profile needs ssm:GetParameter and kms:Decrypt on it"; exit 1 }
}
$v2 = Join-Path $env:ProgramFiles 'Amazon\EC2Launch\EC2Launch.exe'
$v1 = Join-Path $env:ProgramData 'Amazon\EC2-Windows\Launch'
$ec2config = Join-Path $env:ProgramFiles 'Amazon\Ec2ConfigService'
if (Test-Path $v2) {
  $config = (& $v2 get-agent-config --format json | Out-String) | ConvertFrom-Json
  $stage = $config.config | Where-Object { $_.stage -eq 'preReady' } | Select-Object -First 1
  if (-not $stage) { $stage = [pscustomobject]@{ stage = 'preReady'; tasks = @() }; $config.config = @($config.config) + $stage }
  $task = $stage.tasks | Where-Object { $_.task -eq 'setAdminAccount' } | Select-Object -First 1
  if (-not $task) { $task = [pscustomobject]@{ task = 'setAdminAccount' }; $stage.tasks = @($stage.tasks) + $task }
  if (-not $task.inputs) { $task | Add-Member -Force inputs ([pscustomobject]@{}) }
  $secret = [pscustomobject]@{ type = $v2PasswordType }
  if ($password) { $secret | Add-Member data $password }
  $task.inputs | Add-Member -Force password $secret
  # agent-config.yml accepts JSON (YAML is a superset), written without a byte-order mark; validated before anything is reset.
  [IO.File]::WriteAllText((Join-Path $env:ProgramData 'Amazon\EC2Launch\config\agent-config.yml'), ($config | ConvertTo-Json -Depth 32))
  & $v2 validate; if ($LASTEXITCODE -ne 0) { Write-Error 'EC2Launch v2 rejected agent-config.yml'; exit 1 }
  & $v2 reset --block --clean; if ($LASTEXITCODE -ne 0) { Write-Error 'ec2launch reset failed'; exit 1 }
  & $v2 sysprep --block --clean --shutdown
  exit $LASTEXITCODE
}
if (Test-Path (Join-Path $v1 'Scripts\SysprepInstance.ps1')) {
  $launchConfig = Join-Path $v1 'Config\LaunchConfig.json'
  $settings = Get-Content $launchConfig -Raw | ConvertFrom-Json
  $settings.adminPasswordType = $v1PasswordType
  $settings | Add-Member -Force adminPassword ([string]$password)
  $settings | ConvertTo-Json -Depth 8 | Set-Content -Encoding UTF8 $launchConfig
  & (Join-Path $v1 'Scripts\InitializeInstance.ps1') -Schedule
  & (Join-Path $v1 'Scripts\SysprepInstance.ps1')
  exit $LASTEXITCODE
}
if (Test-Path (Join-Path $ec2config 'Ec2Config.exe')) {
  if ($v1PasswordType -eq 'Specify') { Write-Error 'EC2Config cannot set a specified password: use admin_password random or do-nothing, or move to EC2Launch v2'; exit 1 }
  $file = Join-Path $ec2config 'Settings\Config.xml'
  $xml = [xml](Get-Content $file)
  $plugin = $xml.Ec2ConfigurationSettings.Plugins.Plugin | Where-Object { $_.Name -eq 'Ec2SetPassword' }
  $plugin.State = $(if ($v1PasswordType -eq 'Random') { 'Enabled' } else { 'Disabled' })
  $xml.Save($file)
  & (Join-Path $ec2config 'Ec2Config.exe') -sysprep
  exit $LASTEXITCODE
}
Write-Error 'no EC2 launch agent (EC2Launch v2, EC2Launch, EC2Config) on this instance: install EC2Launch v2, then run again'
exit 1
"""

# The launch agents' names for the same three choices.
EC2LAUNCH_V2_PASSWORD = {"random": "random", "specify": "static", "do-nothing": "doNothing"}
EC2LAUNCH_V1_PASSWORD = {"random": "Random", "specify": "Specify", "do-nothing": "DoNothing"}

# Linux has no sysprep: what makes one machine's disk an image for many. The shutdown is scheduled a
# minute out, so the command can report Success before the machine goes down.
LINUX_SANITIZE = r"""
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
"""


def _lines(script: str) -> list[str]:
    return [line for line in script.strip().splitlines() if line.strip()]


def generalize_command(platform: Platform, windows: WindowsOptions) -> Command:
    """Sysprep (Windows) or sanitize (Linux); either ends with the instance shutting itself down."""
    if platform == "linux":
        return Command("AWS-RunShellScript", {"commands": _lines(LINUX_SANITIZE)})
    # Only the parameter *name* travels: the instance reads the password itself. The name is
    # restricted to [A-Za-z0-9_./-] by the request model, so quoting it is safe.
    settings = [
        f"$v2PasswordType = '{EC2LAUNCH_V2_PASSWORD[windows.admin_password]}'",
        f"$v1PasswordType = '{EC2LAUNCH_V1_PASSWORD[windows.admin_password]}'",
        f"$passwordParameter = '{windows.admin_password_parameter or ''}'",
    ]
    return Command("AWS-RunPowerShellScript", {"commands": settings + _lines(WINDOWS_SYSPREP)})
