$ErrorActionPreference='Stop';$ProgressPreference='SilentlyContinue'
function Fail($m,$c,$i){Write-Error -Message $m -Category $c -ErrorId $i}
function Out-VD($o){$j=$o|ConvertTo-Json -Depth 4 -Compress;[Convert]::ToBase64String([Text.Encoding]::UTF8.GetBytes([string]$j))}
function Get-VDNodes{if(Get-Command Get-ClusterNode -EA 0){@(Get-ClusterNode|?{$_.State -eq 'Up'}|%{$_.Name})}else{@($env:COMPUTERNAME)}}
function Get-VDUsed($vms){$u=@{};foreach($v in $vms){foreach($d in $v.HardDrives){if($d.Path){$u[(Split-Path -Parent $d.Path).ToLowerInvariant()]=1}}};$u}
$vms=@(Get-VM -ComputerName (Get-VDNodes));$u=Get-VDUsed $vms;$dirs=@()
if(Test-Path -LiteralPath $a.root){$dirs=@(Get-ChildItem -LiteralPath $a.root -Directory -Filter 'vd-vdc1-*'|%{[pscustomobject]@{Path=$_.FullName;Used=$u.ContainsKey($_.FullName.ToLowerInvariant());Done=(Test-Path -LiteralPath (Join-Path $_.FullName 'vd-complete'));Files=@(Get-ChildItem -LiteralPath $_.FullName -File -Filter '*.vhdx'|%{$_.FullName})}})}
$down=@();if(Get-Command Get-ClusterNode -EA 0){$down=@(Get-ClusterNode|?{$_.State -ne 'Up'}|%{$_.Name})}
Out-VD ([pscustomobject]@{Vms=@($vms|?{$_.Notes -and $_.Notes.Contains('vdc1-')}|%{[pscustomobject]@{Id=[string]$_.Id;Name=$_.Name;Host=$_.ComputerName;Notes=$_.Notes}});Dirs=$dirs;Down=$down})
