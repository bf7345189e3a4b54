<#
.SYNOPSIS
    Start AI Media Analysis on this computer (`orchestrator up`: SQLite, the embedded queue, the worker on the GPU)
    and open the dashboard. Ctrl+C stops it.

.DESCRIPTION
    Runs the installed virtual environment's `orchestrator up` in this console, waits until its /healthz answers,
    then opens the dashboard in the default browser. Nothing is activated or changed globally.
    Exit codes: the orchestrator's own, or 2 not installed, 4 the port is taken by another program, 5 it did not
    start in time.

.EXAMPLE
    powershell -ExecutionPolicy Bypass -File deploy\windows\start.ps1 -Port 8001
#>
[CmdletBinding()]
param(
    [string]$InstallRoot = (Join-Path $env:LOCALAPPDATA 'AIMediaAnalysis'),
    # Default: <InstallRoot>\venv.
    [string]$VenvDir = '',
    # Database, queue, uploaded media, logs and the first API key. Default: <InstallRoot>\data.
    [string]$DataDir = '',
    # 127.0.0.1 keeps the dashboard on this computer; 0.0.0.0 opens it to the network.
    [string]$BindAddress = '127.0.0.1',
    [int]$Port = 8000,
    [int]$StartTimeoutSeconds = 180,
    [switch]$NoBrowser
)

Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'

# A warm shutdown lets running batches finish; after this the process tree is ended.
$StopGraceMilliseconds = 30000

function Format-NativeArgument {
    # Start-Process joins its arguments with spaces without quoting them (Windows PowerShell 5.1).
    param([string]$Value)
    if ($Value -notmatch '[\s"]' -and $Value.Length -gt 0) {
        return $Value
    }
    # Backslashes before the closing quote would escape it; doubling them keeps a folder like "C:\My Data\".
    return '"' + ($Value -replace '(\\+)$', '$1$1') + '"'
}

function Test-Healthy {
    param([string]$Url)
    try {
        $response = Invoke-WebRequest -Uri $Url -UseBasicParsing -TimeoutSec 2
        return $response.StatusCode -eq 200
    } catch {
        return $false
    }
}

function Test-PortFree {
    param(
        [string]$Address,
        [int]$Number
    )
    $ip = $null
    if (-not [System.Net.IPAddress]::TryParse($Address, [ref]$ip)) {
        return $true  # a host name: uvicorn reports a busy port itself
    }
    $listener = New-Object System.Net.Sockets.TcpListener $ip, $Number
    try {
        $listener.Start()
        return $true
    } catch {
        return $false
    } finally {
        $listener.Stop()
    }
}

function Start-AIMediaAnalysis {
    if (-not $VenvDir) {
        $script:VenvDir = Join-Path $InstallRoot 'venv'
    }
    if (-not $DataDir) {
        $script:DataDir = Join-Path $InstallRoot 'data'
    }
    $repoRoot = (Resolve-Path (Join-Path $PSScriptRoot '..\..')).Path
    $orchestrator = Join-Path (Join-Path $VenvDir 'Scripts') 'orchestrator.exe'
    if (-not (Test-Path -LiteralPath $orchestrator)) {
        Write-Host "$orchestrator is missing: run deploy\windows\install.ps1 first." -ForegroundColor Red
        exit 2
    }

    # The address to connect to: a wildcard is where the API listens, not an address.
    $connectHost = $BindAddress
    if ($BindAddress -eq '0.0.0.0' -or $BindAddress -eq '::') {
        $connectHost = '127.0.0.1'
    }
    $dashboardUrl = "http://$($connectHost):$Port/"
    $healthUrl = $dashboardUrl + 'healthz'

    if (Test-Healthy $healthUrl) {
        Write-Host "AI Media Analysis is already running at $dashboardUrl"
        if (-not $NoBrowser) {
            Start-Process $dashboardUrl
        }
        exit 0
    }
    if (-not (Test-PortFree -Address $BindAddress -Number $Port)) {
        Write-Host "Port $Port is used by another program. Start on another one: start.ps1 -Port 8001" -ForegroundColor Red
        exit 4
    }

    New-Item -ItemType Directory -Path $DataDir -Force | Out-Null
    $upArgs = @('up', '--host', $BindAddress, '--port', [string]$Port, '--data-dir', $DataDir)
    $argumentLine = ($upArgs | ForEach-Object { Format-NativeArgument $_ }) -join ' '
    # -NoNewWindow: it shares this console, so Ctrl+C reaches it (and its worker and beat) directly.
    $process = Start-Process -FilePath $orchestrator -ArgumentList $argumentLine -WorkingDirectory $repoRoot -NoNewWindow -PassThru
    # Reading the handle now keeps ExitCode available after the process ends.
    $null = $process.Handle
    try {
        $deadline = (Get-Date).AddSeconds($StartTimeoutSeconds)
        while (-not (Test-Healthy $healthUrl)) {
            if ($process.HasExited) {
                Write-Host "orchestrator up stopped (exit code $($process.ExitCode)); logs: $DataDir\logs" -ForegroundColor Red
                exit $process.ExitCode
            }
            if ((Get-Date) -gt $deadline) {
                Write-Host "No answer from $healthUrl after $StartTimeoutSeconds s; logs: $DataDir\logs" -ForegroundColor Red
                & taskkill.exe /PID $process.Id /T /F | Out-Null
                exit 5
            }
            Start-Sleep -Milliseconds 500
        }
        Write-Host "Dashboard: $dashboardUrl   (Ctrl+C stops AI Media Analysis)" -ForegroundColor Green
        if (-not $NoBrowser) {
            Start-Process $dashboardUrl
        }
        # Short waits, so that Ctrl+C is noticed between them.
        while (-not $process.WaitForExit(500)) {
        }
        exit $process.ExitCode
    } finally {
        if (-not $process.HasExited) {
            Write-Host 'Stopping...'
            if (-not $process.WaitForExit($StopGraceMilliseconds)) {
                # /T also ends the Celery worker and beat it started.
                & taskkill.exe /PID $process.Id /T /F | Out-Null
            }
        }
    }
}

Start-AIMediaAnalysis
