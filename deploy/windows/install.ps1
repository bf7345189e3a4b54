<#
.SYNOPSIS
    Install AI Media Analysis for a local NVIDIA GPU on Windows 11, for the current user, with no administrator rights.

.DESCRIPTION
    Finds Python 3.12 or 3.11, creates a virtual environment, installs PyTorch built for CUDA 12.8 (RTX 50-series
    Blackwell needs it), the project with its worker extras and facenet-pytorch, checks for exiftool (or downloads
    the official Windows build with -WithExiftool), downloads the default models and checks that PyTorch can drive
    the GPU. Running it again is safe: finished steps are quick no-ops.

    Run it with a per-process execution policy, from the repository folder:
        powershell -ExecutionPolicy Bypass -File deploy\windows\install.ps1

    Exit codes: 0 done, 1 a step failed, 2 no suitable Python, 3 the GPU check failed.

.EXAMPLE
    powershell -ExecutionPolicy Bypass -File deploy\windows\install.ps1 -WithExiftool
#>
[CmdletBinding()]
param(
    # Everything this script creates lives here (the virtual environment, exiftool); models live in
    # %USERPROFILE%\.cache\ai-media-analysis\models.
    [string]$InstallRoot = (Join-Path $env:LOCALAPPDATA 'AIMediaAnalysis'),
    # Default: <InstallRoot>\venv.
    [string]$VenvDir = '',
    # Default: the repository this script belongs to.
    [string]$RepoRoot = '',
    # The same pins as the Linux worker image's TORCH_VERSION / TORCHVISION_VERSION build arguments.
    [string]$TorchVersion = '2.10.0',
    [string]$TorchvisionVersion = '0.25.0',
    [string]$TorchIndexUrl = 'https://download.pytorch.org/whl/cu128',
    [string[]]$Models = @(
        'clip-vit-b-32-openai',
        'open-nsfw',
        'yolo11n',
        'mtcnn-facenet',
        'inception-resnet-v1-vggface2',
        'faster-whisper-small'
    ),
    [switch]$SkipModels,
    # Download the official Windows exiftool from exiftool.org into <InstallRoot>\exiftool (checked by SHA-256).
    [switch]$WithExiftool,
    [switch]$SkipGpuCheck
)

Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'

$SupportedPythons = @('3.12', '3.11')
$PythonHint = 'Install Python 3.12 for your user from https://www.python.org/downloads/windows/ ' +
    '(tick "Add python.exe to PATH"), or run: winget install Python.Python.3.12 --scope user'
$ExiftoolSite = 'https://exiftool.org'
$BytesPerMB = 1048576

function Write-Step {
    param([string]$Message)
    Write-Host ''
    Write-Host "==> $Message" -ForegroundColor Cyan
}

function Invoke-Native {
    # Runs a program, showing its output, and stops the install when it fails.
    param(
        [string]$Title,
        [string]$Program,
        [string[]]$Arguments
    )
    Write-Step $Title
    & $Program @Arguments
    if ($LASTEXITCODE -ne 0) {
        throw "$Title failed (exit code $LASTEXITCODE)."
    }
}

function Get-PythonInfo {
    # Version and path of a Python command, or $null when it does not run (the Microsoft Store alias prints
    # nothing useful and fails).
    param(
        [string]$Program,
        [string[]]$PrefixArguments
    )
    # Windows PowerShell turns a native program's stderr into errors; a failing candidate is simply skipped.
    $ErrorActionPreference = 'Continue'
    try {
        $answer = & $Program @PrefixArguments -c 'import sys; print(sys.version_info[0], sys.version_info[1], sys.executable)' 2>$null
    } catch {
        return $null
    }
    if ($LASTEXITCODE -ne 0 -or -not $answer) {
        return $null
    }
    $parts = ([string]($answer | Select-Object -First 1)).Trim() -split ' ', 3
    if ($parts.Count -lt 3) {
        return $null
    }
    return [pscustomobject]@{ Version = '{0}.{1}' -f $parts[0], $parts[1]; Path = $parts[2] }
}

function Find-Python {
    # The py launcher first (it knows every installed version), then python / python3 on PATH.
    if (Get-Command py -ErrorAction SilentlyContinue) {
        foreach ($version in $SupportedPythons) {
            $info = Get-PythonInfo -Program 'py' -PrefixArguments @("-$version")
            if ($null -ne $info -and $SupportedPythons -contains $info.Version) {
                return $info
            }
        }
    }
    foreach ($name in @('python', 'python3')) {
        if (Get-Command $name -ErrorAction SilentlyContinue) {
            $info = Get-PythonInfo -Program $name -PrefixArguments @()
            if ($null -ne $info -and $SupportedPythons -contains $info.Version) {
                return $info
            }
            if ($null -ne $info) {
                Write-Host "Skipping Python $($info.Version) at $($info.Path): 3.12 or 3.11 is needed." -ForegroundColor Yellow
            }
        }
    }
    return $null
}

function Save-Download {
    # Streams a URL to a file with a progress bar (Invoke-WebRequest's is very slow on Windows PowerShell 5.1).
    param(
        [string]$Url,
        [string]$Destination
    )
    $request = [System.Net.HttpWebRequest]::Create($Url)
    $request.UserAgent = 'ai-media-analysis-install'
    $response = $request.GetResponse()
    $activity = "Downloading $Url"
    try {
        $total = $response.ContentLength
        $source = $response.GetResponseStream()
        $target = [System.IO.File]::Create($Destination)
        try {
            $buffer = New-Object byte[] $BytesPerMB
            $done = 0
            while ($true) {
                $read = $source.Read($buffer, 0, $buffer.Length)
                if ($read -le 0) {
                    break
                }
                $target.Write($buffer, 0, $read)
                $done += $read
                if ($total -gt 0) {
                    $status = '{0:N1} of {1:N1} MB' -f ($done / $BytesPerMB), ($total / $BytesPerMB)
                    Write-Progress -Activity $activity -Status $status -PercentComplete ([int](100 * $done / $total))
                }
            }
        } finally {
            $target.Dispose()
            $source.Dispose()
        }
    } finally {
        $response.Dispose()
        Write-Progress -Activity $activity -Completed
    }
}

function Find-Exiftool {
    # The places gpu_worker/tagging/exiftool_locate.py looks in, in its order.
    param([string]$Venv)
    $folders = @((Join-Path $Venv 'Scripts'), (Join-Path (Split-Path $Venv -Parent) 'exiftool'))
    foreach ($folder in $folders) {
        foreach ($name in @('exiftool.exe', 'exiftool(-k).exe')) {
            $candidate = Join-Path $folder $name
            if (Test-Path -LiteralPath $candidate -PathType Leaf) {
                return $candidate
            }
        }
    }
    $onPath = Get-Command 'exiftool.exe' -CommandType Application -ErrorAction SilentlyContinue | Select-Object -First 1
    if ($null -ne $onPath) {
        return $onPath.Source
    }
    return $null
}

function Install-Exiftool {
    # The official 64-bit Windows zip: exiftool(-k).exe and its exiftool_files folder, renamed to exiftool.exe.
    param([string]$Folder)
    [Net.ServicePointManager]::SecurityProtocol = [Net.ServicePointManager]::SecurityProtocol -bor [Net.SecurityProtocolType]::Tls12
    $version = (New-Object System.Net.WebClient).DownloadString("$ExiftoolSite/ver.txt").Trim()
    $zipName = "exiftool-$version" + '_64.zip'
    $checksums = (New-Object System.Net.WebClient).DownloadString("$ExiftoolSite/checksums.txt")
    $pattern = '\(' + [regex]::Escape($zipName) + '\)\s*=\s*([0-9a-fA-F]{64})'
    $match = [regex]::Match($checksums, $pattern)
    if (-not $match.Success) {
        throw "No SHA-256 for $zipName in $ExiftoolSite/checksums.txt; put exiftool.exe into $Folder by hand."
    }
    $staging = Join-Path (Split-Path $Folder -Parent) 'exiftool-download'
    if (Test-Path -LiteralPath $staging) {
        Remove-Item -LiteralPath $staging -Recurse -Force
    }
    New-Item -ItemType Directory -Path $staging | Out-Null
    try {
        $zip = Join-Path $staging $zipName
        Save-Download -Url "$ExiftoolSite/$zipName" -Destination $zip
        $actual = (Get-FileHash -LiteralPath $zip -Algorithm SHA256).Hash
        if ($actual -ne $match.Groups[1].Value.ToUpperInvariant()) {
            throw "$zipName does not match its published SHA-256; not installed."
        }
        Expand-Archive -LiteralPath $zip -DestinationPath (Join-Path $staging 'unpacked') -Force
        $exe = Get-ChildItem -LiteralPath (Join-Path $staging 'unpacked') -Recurse -Filter 'exiftool(-k).exe' | Select-Object -First 1
        if ($null -eq $exe) {
            throw "$zipName holds no exiftool(-k).exe."
        }
        if (Test-Path -LiteralPath $Folder) {
            Remove-Item -LiteralPath $Folder -Recurse -Force
        }
        New-Item -ItemType Directory -Path $Folder | Out-Null
        Copy-Item -Path (Join-Path $exe.DirectoryName '*') -Destination $Folder -Recurse -Force
        # Without "(-k)" in its name exiftool does not wait for a key press before it exits.
        Rename-Item -LiteralPath (Join-Path $Folder $exe.Name) -NewName 'exiftool.exe'
    } finally {
        Remove-Item -LiteralPath $staging -Recurse -Force -ErrorAction SilentlyContinue
    }
    return (Join-Path $Folder 'exiftool.exe')
}

function Install-AIMediaAnalysis {
    if (-not $RepoRoot) {
        $script:RepoRoot = (Resolve-Path (Join-Path $PSScriptRoot '..\..')).Path
    }
    if (-not (Test-Path -LiteralPath (Join-Path $RepoRoot 'pyproject.toml'))) {
        throw "$RepoRoot is not the AI Media Analysis repository (no pyproject.toml); pass -RepoRoot."
    }
    if (-not $VenvDir) {
        $script:VenvDir = Join-Path $InstallRoot 'venv'
    }
    $venvPython = Join-Path (Join-Path $VenvDir 'Scripts') 'python.exe'
    $gpuWorker = Join-Path (Join-Path $VenvDir 'Scripts') 'gpu-worker.exe'

    Write-Step 'Python'
    if (Test-Path -LiteralPath $venvPython) {
        $existing = Get-PythonInfo -Program $venvPython -PrefixArguments @()
        if ($null -eq $existing -or $SupportedPythons -notcontains $existing.Version) {
            throw "The virtual environment $VenvDir does not run Python 3.12 or 3.11; delete that folder and run again."
        }
        Write-Host "Reusing the virtual environment $VenvDir (Python $($existing.Version))"
    } else {
        $python = Find-Python
        if ($null -eq $python) {
            Write-Host "Python 3.12 or 3.11 was not found. $PythonHint" -ForegroundColor Red
            exit 2
        }
        Write-Host "Using Python $($python.Version) at $($python.Path)"
        New-Item -ItemType Directory -Path $InstallRoot -Force | Out-Null
        Invoke-Native -Title "Creating the virtual environment $VenvDir" -Program $python.Path -Arguments @('-m', 'venv', $VenvDir)
    }

    Invoke-Native -Title 'Upgrading pip' -Program $venvPython -Arguments @(
        '-m', 'pip', 'install', '--disable-pip-version-check', '--upgrade', 'pip'
    )

    # The local version label (+cu128) makes pip replace a CPU-only torch of the same version.
    $cudaTag = ($TorchIndexUrl.TrimEnd('/') -split '/')[-1]
    $torchPins = @("torch==$TorchVersion+$cudaTag", "torchvision==$TorchvisionVersion+$cudaTag")
    Invoke-Native -Title "PyTorch $TorchVersion for CUDA ($cudaTag; a download of about 3 GB the first time)" -Program $venvPython -Arguments (
        @('-m', 'pip', 'install', '--disable-pip-version-check', '--index-url', $TorchIndexUrl) + $torchPins
    )

    # The constraints keep the CUDA build while pip resolves the project's own requirements.
    $constraints = Join-Path $InstallRoot 'torch-constraints.txt'
    Set-Content -LiteralPath $constraints -Value $torchPins -Encoding ASCII
    Invoke-Native -Title 'AI Media Analysis and its worker libraries' -Program $venvPython -Arguments @(
        '-m', 'pip', 'install', '--disable-pip-version-check', '--constraint', $constraints,
        '--extra-index-url', $TorchIndexUrl, '--editable', ($RepoRoot + '[worker]')
    )
    # facenet-pytorch's metadata pins an old torch; its code works with ours.
    Invoke-Native -Title 'facenet-pytorch (without its outdated pins)' -Program $venvPython -Arguments @(
        '-m', 'pip', 'install', '--disable-pip-version-check', '--no-deps', 'facenet-pytorch>=2.6'
    )

    Write-Step 'exiftool (writes the keywords into your files)'
    $exiftool = Find-Exiftool -Venv $VenvDir
    $exiftoolFolder = Join-Path (Split-Path $VenvDir -Parent) 'exiftool'
    if ($null -eq $exiftool -and $WithExiftool) {
        $exiftool = Install-Exiftool -Folder $exiftoolFolder
    }
    if ($null -eq $exiftool) {
        Write-Host ('exiftool was not found. Run this script again with -WithExiftool, or download the Windows zip ' +
            "from $ExiftoolSite, unpack it into $exiftoolFolder and rename exiftool(-k).exe to exiftool.exe. " +
            'Until then tag with -Write none (JSON sidecars only).') -ForegroundColor Yellow
    } elseif ((Split-Path $exiftool -Leaf) -eq 'exiftool.exe') {
        $exiftoolVersion = & $exiftool -ver
        Write-Host "exiftool $exiftoolVersion at $exiftool"
    } else {
        Write-Host "exiftool at $exiftool (renaming it to exiftool.exe stops it waiting for a key when run by hand)"
    }

    Push-Location $RepoRoot
    try {
        if (-not $SkipModels) {
            foreach ($model in $Models) {
                Invoke-Native -Title "Model $model" -Program $gpuWorker -Arguments @('models', 'fetch', $model)
            }
        }
        if (-not $SkipGpuCheck) {
            Write-Step 'Checking that PyTorch can use the GPU'
            & $venvPython -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())'
            $selfcheckArgs = @('selfcheck', '--device', 'cuda')
            & $gpuWorker @selfcheckArgs
            if ($LASTEXITCODE -ne 0) {
                Write-Host ('The GPU check failed. "not compatible" or "sm_120" means this PyTorch was not built for ' +
                    'your GPU: run this script again (it installs the cu128 build). "CUDA not available" usually ' +
                    'means the NVIDIA driver is missing or too old (RTX 50-series needs R570 or newer).') -ForegroundColor Red
                exit 3
            }
        }
    } finally {
        Pop-Location
    }

    Write-Host ''
    Write-Host 'Installed. Start it with:  powershell -ExecutionPolicy Bypass -File deploy\windows\start.ps1' -ForegroundColor Green
}

try {
    Install-AIMediaAnalysis
} catch {
    Write-Host "Install failed: $($_.Exception.Message)" -ForegroundColor Red
    exit 1
}
exit 0
