$ErrorActionPreference='Stop';$ProgressPreference='SilentlyContinue'
function Fail($m,$c,$i){Write-Error -Message $m -Category $c -ErrorId $i}
function Out-VD($o){$j=$o|ConvertTo-Json -Depth 4 -Compress;[Convert]::ToBase64String([Text.Encoding]::UTF8.GetBytes([string]$j))}
if(Get-Command Get-ClusterNode -EA 0){Out-VD @(Get-ClusterNode|%{[pscustomobject]@{Name=$_.Name;State=$_.State}})}else{Out-VD @([pscustomobject]@{Name=$env:COMPUTERNAME;State=0})}
