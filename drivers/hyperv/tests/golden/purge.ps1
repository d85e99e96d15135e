$ErrorActionPreference='Stop';$ProgressPreference='SilentlyContinue'
function Fail($m,$c,$i){Write-Error -Message $m -Category $c -ErrorId $i}
function Out-VD($o){$j=$o|ConvertTo-Json -Depth 4 -Compress;[Convert]::ToBase64String([Text.Encoding]::UTF8.GetBytes([string]$j))}
function Get-VDNodes{if(Get-Command Get-ClusterNode -EA 0){@(Get-ClusterNode|?{$_.State -eq 'Up'}|%{$_.Name})}else{@($env:COMPUTERNAME)}}
function Get-VDUsed($vms){$u=@{};foreach($v in $vms){foreach($d in $v.HardDrives){if($d.Path){$u[(Split-Path -Parent $d.Path).ToLowerInvariant()]=1}}};$u}
function Remove-VDVM($v){$p=@($v.HardDrives|?{$_.Path}|%{$_.Path})
if($v.IsClustered){Get-ClusterGroup -Name ([string]$v.Id) -EA 0|Remove-ClusterGroup -RemoveResources -Force}
if($v.State -eq 'Saved'){Remove-VMSavedState -VM $v}elseif($v.State -ne 'Off'){Stop-VM -VM $v -TurnOff -Force}
Get-VMSnapshot -VM $v|Remove-VMSnapshot;Remove-VM -VM $v -Force
foreach($f in $p){Remove-Item -LiteralPath $f -Force -EA 0}
foreach($d in @($p|%{Split-Path -Parent $_}|Sort-Object -Unique)){if((Split-Path -Leaf $d) -like 'vd-*' -and -not @(Get-ChildItem -LiteralPath $d -EA 0|?{$_.Name -ne 'vd-complete'}).Count){Remove-Item -LiteralPath $d -Recurse -Force -EA 0}}}
function Remove-VDDir($d,$u){if(-not $d -or -not (Test-Path -LiteralPath $d) -or (Split-Path -Leaf $d) -notlike 'vd-vdc1-*' -or $u.ContainsKey($d.ToLowerInvariant()) -or (Test-Path -LiteralPath (Join-Path $d 'vd-complete'))){return $false}
Remove-Item -LiteralPath $d -Recurse -Force;$true}
$all=Get-VDNodes;$vms=@(Get-VM -ComputerName $all|?{$_.Notes -and $_.Notes.Contains($a.token)})
foreach($vm in $vms){Remove-VDVM $vm}
Remove-VDDir $a.dir (Get-VDUsed @(Get-VM -ComputerName $all))|Out-Null
Out-VD @($vms|%{[string]$_.Id})
