$ErrorActionPreference='Stop';$ProgressPreference='SilentlyContinue'
function Fail($m,$c,$i){Write-Error -Message $m -Category $c -ErrorId $i}
function Out-VD($o){$j=$o|ConvertTo-Json -Depth 4 -Compress;[Convert]::ToBase64String([Text.Encoding]::UTF8.GetBytes([string]$j))}
Out-VD @(Get-VMSwitch|%{[pscustomobject]@{Id=[string]$_.Id;Name=$_.Name;Type=$_.SwitchType}})
