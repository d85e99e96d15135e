$ErrorActionPreference='Stop';$ProgressPreference='SilentlyContinue'
function Fail($m,$c,$i){Write-Error -Message $m -Category $c -ErrorId $i}
function Out-VD($o){$j=$o|ConvertTo-Json -Depth 4 -Compress;[Convert]::ToBase64String([Text.Encoding]::UTF8.GetBytes([string]$j))}
function Get-VDNodes{if(Get-Command Get-ClusterNode -EA 0){@(Get-ClusterNode|?{$_.State -eq 'Up'}|%{$_.Name})}else{@($env:COMPUTERNAME)}}
function Test-VDMine($v){if(-not ($v.Notes -like '{*')){return $false};try{$n=$v.Notes|ConvertFrom-Json}catch{return $false};$null -ne $n.virtdrivers}
function Get-VDVM($id){$v=Get-VM -ComputerName (Get-VDNodes) -Id $id -EA 0;if(-not $v -or (-not $a.any -and -not (Test-VDMine $v))){Fail "Hyper-V was unable to find a virtual machine with ID $id." ObjectNotFound VDVMNotFound};$v}
$vm=Get-VDVM $a.id
$o=@($vm.HardDrives|?{$_.Path})
$dir=if($o.Count){Split-Path -Parent $o[0].Path}else{Join-Path $a.root "vd-$($vm.Id)"}
$a|Add-Member -NotePropertyName path -NotePropertyValue (Join-Path $dir $a.file)
New-Item -ItemType Directory -Path $dir -Force|Out-Null
if($a.fixed){New-VHD -ComputerName $vm.ComputerName -Path $a.path -SizeBytes $a.size -Fixed|Out-Null}else{New-VHD -ComputerName $vm.ComputerName -Path $a.path -SizeBytes $a.size -Dynamic|Out-Null}
try{Add-VMHardDiskDrive -VM $vm -Path $a.path}catch{$e=$_;Remove-Item -LiteralPath $a.path -Force -EA 0;throw $e}
if($a.notes){Set-VM -VM $vm -Notes $a.notes}
$d=Get-VHD -ComputerName $vm.ComputerName -Path $a.path
Out-VD ([pscustomobject]@{Path=$d.Path;Size=$d.Size;Type=$d.VhdType;Format=$d.VhdFormat})
