$ErrorActionPreference='Stop';$ProgressPreference='SilentlyContinue'
function Fail($m,$c,$i){Write-Error -Message $m -Category $c -ErrorId $i}
function Out-VD($o){$j=$o|ConvertTo-Json -Depth 4 -Compress;[Convert]::ToBase64String([Text.Encoding]::UTF8.GetBytes([string]$j))}
function Get-VDNodes{if(Get-Command Get-ClusterNode -EA 0){@(Get-ClusterNode|?{$_.State -eq 'Up'}|%{$_.Name})}else{@($env:COMPUTERNAME)}}
function Test-VDMine($v){if(-not ($v.Notes -like '{*')){return $false};try{$n=$v.Notes|ConvertFrom-Json}catch{return $false};$null -ne $n.virtdrivers}
function Get-VDVM($id){$v=Get-VM -ComputerName (Get-VDNodes) -Id $id -EA 0;if(-not $v -or (-not $a.any -and -not (Test-VDMine $v))){Fail "Hyper-V was unable to find a virtual machine with ID $id." ObjectNotFound VDVMNotFound};$v}
function Remove-VDVM($v){$p=@($v.HardDrives|?{$_.Path}|%{$_.Path})
if($v.IsClustered){Get-ClusterGroup -Name ([string]$v.Id) -EA 0|Remove-ClusterGroup -RemoveResources -Force}
if($v.State -eq 'Saved'){Remove-VMSavedState -VM $v}elseif($v.State -ne 'Off'){Stop-VM -VM $v -TurnOff -Force}
Get-VMSnapshot -VM $v|Remove-VMSnapshot;Remove-VM -VM $v -Force
foreach($f in $p){Remove-Item -LiteralPath $f -Force -EA 0}
foreach($d in @($p|%{Split-Path -Parent $_}|Sort-Object -Unique)){if((Split-Path -Leaf $d) -like 'vd-*' -and -not @(Get-ChildItem -LiteralPath $d -EA 0|?{$_.Name -ne 'vd-complete'}).Count){Remove-Item -LiteralPath $d -Recurse -Force -EA 0}}}
Remove-VDVM (Get-VDVM $a.id)
Out-VD @()
