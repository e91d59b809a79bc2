# AMI Factory clean-up before imaging (Windows), the stack's CleanupWindowsDocument (SSM).
# SSM runs this as SYSTEM, so $env:TEMP and Clear-RecycleBin would reach only SYSTEM's own temp
# folder and recycle bin. What people mean by "clean up before imaging" is every user profile's temp
# folder, the Windows temp folder and every drive's recycle bin: those are emptied here, and the
# output says what was removed from each. Files in use stay; nothing here fails the run.
$ErrorActionPreference = 'Continue'
$targets = @()
$targets += Get-ChildItem -LiteralPath (Join-Path $env:SystemDrive 'Users') -Directory -Force -ErrorAction SilentlyContinue |
  ForEach-Object { Join-Path $_.FullName 'AppData\Local\Temp' }
$targets += Join-Path $env:SystemRoot 'Temp'
foreach ($drive in Get-PSDrive -PSProvider FileSystem -ErrorAction SilentlyContinue) {
  $bin = Join-Path $drive.Root '$Recycle.Bin'
  $targets += Get-ChildItem -LiteralPath $bin -Directory -Force -ErrorAction SilentlyContinue | ForEach-Object { $_.FullName }
}
foreach ($target in @($targets | Where-Object { $_ })) {
  if (-not (Test-Path -LiteralPath $target)) { continue }
  $before = @(Get-ChildItem -LiteralPath $target -Recurse -File -Force -ErrorAction SilentlyContinue)
  $bytes = ($before | Measure-Object -Property Length -Sum).Sum
  Get-ChildItem -LiteralPath $target -Force -ErrorAction SilentlyContinue |
    Where-Object { $_.Name -ne 'desktop.ini' } |
    Remove-Item -Recurse -Force -ErrorAction SilentlyContinue
  $left = @(Get-ChildItem -LiteralPath $target -Recurse -File -Force -ErrorAction SilentlyContinue).Count
  Write-Output ('{0}: removed {1} files ({2:N1} MB); {3} in use, left' -f $target, ($before.Count - $left), ($bytes / 1048576), $left)
}
exit 0
