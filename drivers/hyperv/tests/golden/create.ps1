$ErrorActionPreference='Stop';$ProgressPreference='SilentlyContinue'
function Fail($m,$c,$i){Write-Error -Message $m -Category $c -ErrorId $i}
function Out-VD($o){$j=$o|ConvertTo-Json -Depth 4 -Compress;[Convert]::ToBase64String([Text.Encoding]::UTF8.GetBytes([string]$j))}
function Get-VDNodes{if(Get-Command Get-ClusterNode -EA 0){@(Get-ClusterNode|?{$_.State -eq 'Up'}|%{$_.Name})}else{@($env:COMPUTERNAME)}}
function Test-VDNode($x){if(-not $x){return};$k=if(Get-Command Get-ClusterNode -EA 0){@(Get-ClusterNode|%{$_.Name})}else{@($env:COMPUTERNAME)}
if(-not ($k -contains $x)){Fail "No node named $x in this cluster." ObjectNotFound VDNoSuchNode}}
$all=Get-VDNodes;Test-VDNode $a.node
if(@(Get-VM -ComputerName $all|?{$_.Name -eq $a.name}).Count){Fail "A virtual machine named $($a.name) exists already." ResourceExists VDNameExists}
$n=if($a.node){$a.node}else{$all|Sort-Object{(Get-VM -ComputerName $_|Measure-Object -Property MemoryStartup -Sum).Sum}|Select-Object -First 1}
$vm=$null;$g=$null;$made=@()
try{
if($a.mk){New-Item -ItemType Directory -Path $a.dir -Force|Out-Null}
$i=0;foreach($d in $a.disks){$f=Join-Path $a.dir "disk$i.vhdx";$i++
if($d.fixed){New-VHD -ComputerName $n -Path $f -SizeBytes $d.size -Fixed|Out-Null}else{New-VHD -ComputerName $n -Path $f -SizeBytes $d.size -Dynamic|Out-Null};$made+=$f}
$vm=New-VM -ComputerName $n -Name $a.name -Generation 2 -MemoryStartupBytes $a.mem -NoVHD
Set-VM -VM $vm -Notes $a.notes
Get-VMNetworkAdapter -VM $vm|Remove-VMNetworkAdapter
foreach($x in $a.nics){Add-VMNetworkAdapter -VM $vm -SwitchName $x.sw -StaticMacAddress $x.mac}
foreach($f in @($a.pre)+$made){Add-VMHardDiskDrive -VM $vm -Path $f}
Set-VMProcessor -VM $vm -Count $a.cpu
Set-VMMemory -VM $vm -DynamicMemoryEnabled $false -StartupBytes $a.mem
if($a.ha){$g=Add-ClusterVirtualMachineRole -VMId $vm.Id -Name ([string]$vm.Id)}
if($a.start){Start-VM -VM $vm}
}catch{$e=$_
if($g){Remove-ClusterGroup -InputObject $g -RemoveResources -Force -EA 0}
if($vm){Stop-VM -VM $vm -TurnOff -Force -EA 0;Remove-VM -VM $vm -Force}
if($a.mk){Remove-Item -LiteralPath $a.dir -Recurse -Force -EA 0}
throw $e}
Out-VD ([string]$vm.Id)
