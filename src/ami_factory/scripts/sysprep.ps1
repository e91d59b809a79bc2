# AMI Factory generalize (Windows): the stack's SysprepWindowsDocument (SSM). Its two parameters are
# the administrator password choice (allowedValues random, specify, do-nothing) and the name of the
# SSM SecureString holding a specified password (allowedPattern: a parameter name, or empty): SSM
# refuses any other value, so neither can carry code. The instance reads the password; the run never does.
$choice = '{{ AdminAccount }}'
$passwordParameter = '{{ AdminSecretParameter }}'
# The launch agents' names for the same three choices.
$v2PasswordType = @{ 'random' = 'random'; 'specify' = 'static'; 'do-nothing' = 'doNothing' }[$choice]
$v1PasswordType = @{ 'random' = 'Random'; 'specify' = 'Specify'; 'do-nothing' = 'DoNothing' }[$choice]
#
# Sysprep through whichever launch agent the instance has: EC2Launch v2 (Windows Server 2016 and
# later), EC2Launch v1 (2016/2019), EC2Config (2012 R2 and older). Every check that can fail runs
# before sysprep and exits non-zero, so a failed preparation is a Failed command on a running
# instance, never a shut-down instance that looks generalized.
$ErrorActionPreference = 'Stop'

function Get-SpecifiedPassword {
  if (-not $passwordParameter) { return $null }
  $value = (Get-SSMParameterValue -Names $passwordParameter -WithDecryption $true).Parameters[0].Value
  if (-not $value) {
    Write-Error "cannot read SecureString ${passwordParameter}: the instance profile needs ssm:GetParameter and kms:Decrypt on it"
    exit 1
  }
  return $value
}

function Invoke-Ec2LaunchV2Sysprep([string] $agent, [string] $password) {
  $config = (& $agent get-agent-config --format json | Out-String) | ConvertFrom-Json
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
  & $agent validate
  if ($LASTEXITCODE -ne 0) { Write-Error 'EC2Launch v2 rejected agent-config.yml'; exit 1 }
  & $agent reset --block --clean
  if ($LASTEXITCODE -ne 0) { Write-Error 'ec2launch reset failed'; exit 1 }
  & $agent sysprep --block --clean --shutdown
  exit $LASTEXITCODE
}

function Invoke-Ec2LaunchV1Sysprep([string] $launch, [string] $password) {
  $launchConfig = Join-Path $launch 'Config\LaunchConfig.json'
  $settings = Get-Content $launchConfig -Raw | ConvertFrom-Json
  $settings.adminPasswordType = $v1PasswordType
  $settings | Add-Member -Force adminPassword ([string]$password)
  $settings | ConvertTo-Json -Depth 8 | Set-Content -Encoding UTF8 $launchConfig
  & (Join-Path $launch 'Scripts\InitializeInstance.ps1') -Schedule
  & (Join-Path $launch 'Scripts\SysprepInstance.ps1')
  exit $LASTEXITCODE
}

function Invoke-Ec2ConfigSysprep([string] $service) {
  if ($v1PasswordType -eq 'Specify') {
    Write-Error 'EC2Config cannot set a specified password: use admin_password random or do-nothing, or move to EC2Launch v2'
    exit 1
  }
  $file = Join-Path $service 'Settings\Config.xml'
  $xml = [xml](Get-Content $file)
  $plugin = $xml.Ec2ConfigurationSettings.Plugins.Plugin | Where-Object { $_.Name -eq 'Ec2SetPassword' }
  $plugin.State = $(if ($v1PasswordType -eq 'Random') { 'Enabled' } else { 'Disabled' })
  $xml.Save($file)
  & (Join-Path $service 'Ec2Config.exe') -sysprep
  exit $LASTEXITCODE
}

$password = Get-SpecifiedPassword
$v2 = Join-Path $env:ProgramFiles 'Amazon\EC2Launch\EC2Launch.exe'
$v1 = Join-Path $env:ProgramData 'Amazon\EC2-Windows\Launch'
$ec2config = Join-Path $env:ProgramFiles 'Amazon\Ec2ConfigService'
if (Test-Path $v2) { Invoke-Ec2LaunchV2Sysprep $v2 $password }
if (Test-Path (Join-Path $v1 'Scripts\SysprepInstance.ps1')) { Invoke-Ec2LaunchV1Sysprep $v1 $password }
if (Test-Path (Join-Path $ec2config 'Ec2Config.exe')) { Invoke-Ec2ConfigSysprep $ec2config }
Write-Error 'no EC2 launch agent (EC2Launch v2, EC2Launch, EC2Config) on this instance: install EC2Launch v2, then run again'
exit 1
