$ErrorActionPreference='Stop';$ProgressPreference='SilentlyContinue'
function Fail($m,$c,$i){Write-Error -Message $m -Category $c -ErrorId $i}
function Out-VD($o){$j=$o|ConvertTo-Json -Depth 4 -Compress;[Convert]::ToBase64String([Text.Encoding]::UTF8.GetBytes([string]$j))}
function Get-VDNodes{if(Get-Command Get-ClusterNode -EA 0){@(Get-ClusterNode|?{$_.State -eq 'Up'}|%{$_.Name})}else{@($env:COMPUTERNAME)}}
function Get-VDInfo($vms){$h=@{};$vms|Group-Object ComputerName|%{$p=@($_.Group.HardDrives.Path|?{$_});if($p.Count){Get-VHD -ComputerName $_.Name -Path $p|%{$h[$_.Path]=$_}}};foreach($v in $vms){[pscustomobject]@{Id=[string]$v.Id;Name=$v.Name;State=$v.State;Cpu=$v.ProcessorCount;Mem=$v.MemoryStartup;Host=$v.ComputerName;Notes=$v.Notes;Clustered=$v.IsClustered;Disks=@($v.HardDrives.Path|?{$_}|%{$d=$h[$_];[pscustomobject]@{Path=$_;Size=$d.Size;Type=$d.VhdType;Format=$d.VhdFormat}});Nics=@($v.NetworkAdapters|Select-Object 'Id','SwitchName','MacAddress','IPAddresses')}}}
$n=Get-ClusterNode -Name $a.node
if($n.State -ne 'Up'){Fail "Node $($a.node) is not up." InvalidOperation VDNodeDown};$t=$n.Name
$vm=Get-VM -ComputerName (Get-VDNodes) -Id $a.id -EA 0
if($vm){if($vm.State -ne 'Off'){Fail "The virtual machine is $($vm.State) on a node that is up: migrate it." InvalidOperation VDInvalidState}
if($vm.ComputerName -eq $t){Fail "The virtual machine is on $t already." InvalidArgument VDSameNode}
if($vm.IsClustered){Move-ClusterGroup -Name ([string]$vm.Id) -Node $t|Out-Null}else{Move-VM -VM $vm -DestinationHost $t}}else{
$p=Join-Path (Get-VMHost -ComputerName $t).VirtualMachinePath "Virtual Machines\$($a.id).vmcx"
if(-not (Test-Path -LiteralPath $p)){Fail "Hyper-V was unable to find a virtual machine with ID $($a.id)." ObjectNotFound VDVMNotFound}
Import-VM -Path $p -Register -ComputerName $t|Out-Null}
Out-VD @(Get-VDInfo @(Get-VM -ComputerName $t -Id $a.id))
