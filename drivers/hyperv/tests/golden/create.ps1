$ErrorActionPreference='Stop';$ProgressPreference='SilentlyContinue'
function Fail($m,$c,$i){Write-Error -Message $m -Category $c -ErrorId $i}
function Out-VD($o){$j=$o|ConvertTo-Json -Depth 4 -Compress;[Convert]::ToBase64String([Text.Encoding]::UTF8.GetBytes([string]$j))}
function Get-VDNodes{if(Get-Command Get-ClusterNode -EA 0){@(Get-ClusterNode|?{$_.State -eq 'Up'}|%{$_.Name})}else{@($env:COMPUTERNAME)}}
function Get-VDInfo($vms){$p=@($vms|%{$_.HardDrives}|?{$_.Path}|%{$_.Path});$h=@{};if($p.Count){Get-VHD -Path $p|%{$h[$_.Path]=$_}};foreach($v in $vms){[pscustomobject]@{Id=[string]$v.Id;Name=$v.Name;State=$v.State;Cpu=$v.ProcessorCount;Mem=$v.MemoryStartup;Host=$v.ComputerName;Notes=$v.Notes;Clustered=$v.IsClustered;Disks=@($v.HardDrives|?{$_.Path}|%{$d=$h[$_.Path];[pscustomobject]@{Path=$_.Path;Size=$d.Size;Type=$d.VhdType;Format=$d.VhdFormat}})}}}
$all=Get-VDNodes
if(@(Get-VM -ComputerName $all|?{$_.Name -eq $a.name}).Count){Fail "A virtual machine named $($a.name) exists already." ResourceExists VDNameExists}
$n=if($a.node){$a.node}else{$all|Sort-Object{(Get-VM -ComputerName $_|Measure-Object -Property MemoryStartup -Sum).Sum}|Select-Object -First 1}
$vm=$null;$g=$null;$made=@()
try{
$vm=New-VM -ComputerName $n -Name $a.name -Generation 2 -MemoryStartupBytes $a.mem -NoVHD
Set-VM -VM $vm -Notes $a.notes
if($a.disks.Count){New-Item -ItemType Directory -Path $a.dir -Force|Out-Null}
$i=0;foreach($d in $a.disks){$f=Join-Path $a.dir "disk$i.vhdx";$i++
if($d.fixed){New-VHD -ComputerName $n -Path $f -SizeBytes $d.size -Fixed|Out-Null}else{New-VHD -ComputerName $n -Path $f -SizeBytes $d.size -Dynamic|Out-Null}
$made+=$f;Add-VMHardDiskDrive -VM $vm -Path $f}
Set-VMProcessor -VM $vm -Count $a.cpu
Set-VMMemory -VM $vm -DynamicMemoryEnabled $false -StartupBytes $a.mem
if($a.ha){$g=Add-ClusterVirtualMachineRole -VMId $vm.Id -Name ([string]$vm.Id)}
if($a.start){Start-VM -VM $vm}
}catch{$e=$_
if($g){Remove-ClusterGroup -InputObject $g -RemoveResources -Force -EA 0}
if($vm){Stop-VM -VM $vm -TurnOff -Force -EA 0;Remove-VM -VM $vm -Force}
foreach($f in $made){Remove-Item -LiteralPath $f -Force -EA 0}
if($a.disks.Count){Remove-Item -LiteralPath $a.dir -Recurse -Force -EA 0}
throw $e}
Out-VD @(Get-VDInfo @(Get-VM -ComputerName $n -Id $vm.Id))
