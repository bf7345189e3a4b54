<#
.SYNOPSIS
    Tag every photo and video in a folder with `gpu-worker tag` (keywords into XMP, a JSON sidecar per file), or
    create the "Send to" entry and Desktop shortcut that do it for a right-clicked folder.

.DESCRIPTION
    Needs no server: the models run in this process, on the GPU. Several folders may be given; each is tagged in
    turn. The exit code is gpu-worker's (0 when every folder was tagged), or 2 when it is not installed.

.EXAMPLE
    powershell -ExecutionPolicy Bypass -File deploy\windows\tag-folder.ps1 "D:\Photos\2024" -Analyzers clip,objects,faces
.EXAMPLE
    powershell -ExecutionPolicy Bypass -File deploy\windows\tag-folder.ps1 -CreateShortcut
#>
[CmdletBinding()]
param(
    [Parameter(Position = 0, ValueFromRemainingArguments = $true)]
    [string[]]$Folder = @(),
    [ValidateSet('xmp', 'sidecar', 'none')]
    [string]$Write = 'xmp',
    [ValidateSet('append', 'replace')]
    [string]$Mode = 'append',
    # Comma-separated: clip, objects, faces, transcribe... Default: gpu-worker's (clip).
    [string]$Analyzers = '',
    [ValidateSet('auto', 'cpu', 'cuda')]
    [string]$Device = 'auto',
    [int]$BatchSize = 0,
    [switch]$Resume,
    [switch]$Backup,
    [string]$Exiftool = '',
    [string]$Report = '',
    [string]$InstallRoot = (Join-Path $env:LOCALAPPDATA 'AIMediaAnalysis'),
    # Default: <InstallRoot>\venv.
    [string]$VenvDir = '',
    # Create "Send to > Tag with AI Media Analysis" and a Desktop shortcut (drop a folder on it), then exit.
    [switch]$CreateShortcut,
    [switch]$NoDesktopShortcut,
    # Wait for Enter before closing (the shortcuts use it so that the window stays readable).
    [switch]$Pause
)

Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'

$ShortcutName = 'Tag with AI Media Analysis.lnk'
# Set by Invoke-TagFolder; a function's return value would also collect gpu-worker's output, hiding its progress.
$script:ExitCode = 1

function New-TagShortcut {
    # A per-user .lnk that runs this script on the folder(s) Explorer passes it; no administrator needed.
    param([string]$Path)
    $shell = New-Object -ComObject WScript.Shell
    $link = $shell.CreateShortcut($Path)
    # The PowerShell that runs this script now: powershell.exe (5.1) or pwsh.exe (7).
    $link.TargetPath = (Get-Process -Id $PID).Path
    $link.Arguments = '-NoProfile -ExecutionPolicy Bypass -File "' + $PSCommandPath + '" -Pause'
    $link.WorkingDirectory = (Resolve-Path (Join-Path $PSScriptRoot '..\..')).Path
    $link.Description = 'Tag the photos and videos of a folder with AI Media Analysis'
    $link.IconLocation = (Join-Path $env:SystemRoot 'System32\imageres.dll') + ',108'
    $link.Save()
    Write-Host "Created $Path"
}

function Get-TagArguments {
    param([string]$Target)
    $tagArgs = @('tag', $Target, '--write', $Write, '--mode', $Mode, '--device', $Device)
    if ($Analyzers) {
        $tagArgs += @('--analyzers', $Analyzers)
    }
    if ($BatchSize -gt 0) {
        $tagArgs += @('--batch-size', [string]$BatchSize)
    }
    if ($Resume) {
        $tagArgs += '--resume'
    }
    if ($Backup) {
        $tagArgs += '--backup'
    }
    if ($Exiftool) {
        $tagArgs += @('--exiftool', $Exiftool)
    }
    if ($Report) {
        $tagArgs += @('--report', $Report)
    }
    return , $tagArgs
}

function Invoke-TagFolder {
    if ($CreateShortcut) {
        New-TagShortcut -Path (Join-Path ([Environment]::GetFolderPath('SendTo')) $ShortcutName)
        if (-not $NoDesktopShortcut) {
            New-TagShortcut -Path (Join-Path ([Environment]::GetFolderPath('Desktop')) $ShortcutName)
        }
        Write-Host 'Right-click a folder > Send to > Tag with AI Media Analysis, or drop a folder on the Desktop icon.'
        $script:ExitCode = 0
        return
    }

    if (-not $VenvDir) {
        $script:VenvDir = Join-Path $InstallRoot 'venv'
    }
    $gpuWorker = Join-Path (Join-Path $VenvDir 'Scripts') 'gpu-worker.exe'
    if (-not (Test-Path -LiteralPath $gpuWorker)) {
        Write-Host "$gpuWorker is missing: run deploy\windows\install.ps1 first." -ForegroundColor Red
        $script:ExitCode = 2
        return
    }
    $targets = @($Folder | Where-Object { $_ })
    if ($targets.Count -eq 0) {
        $answer = Read-Host 'Folder to tag'
        $targets = @($answer.Trim().Trim('"'))
    }

    # gpu-worker reads config\gpu_worker.toml from the repository folder, like the other scripts.
    Push-Location (Resolve-Path (Join-Path $PSScriptRoot '..\..')).Path
    try {
        $worst = 0
        foreach ($target in $targets) {
            if (-not (Test-Path -LiteralPath $target -PathType Container)) {
                Write-Host "Not a folder: $target" -ForegroundColor Red
                $worst = 1
                continue
            }
            $full = (Resolve-Path -LiteralPath $target).ProviderPath
            Write-Host "==> Tagging $full" -ForegroundColor Cyan
            $tagArgs = Get-TagArguments -Target $full
            & $gpuWorker @tagArgs
            if ($LASTEXITCODE -ne 0) {
                $worst = $LASTEXITCODE
            }
        }
        $script:ExitCode = $worst
    } finally {
        Pop-Location
    }
}

try {
    Invoke-TagFolder
} catch {
    Write-Host "Tagging failed: $($_.Exception.Message)" -ForegroundColor Red
} finally {
    if ($Pause) {
        Read-Host 'Press Enter to close' | Out-Null
    }
}
exit $script:ExitCode
