$ErrorActionPreference='Stop';$ProgressPreference='SilentlyContinue'
function Fail($m,$c,$i){Write-Error -Message $m -Category $c -ErrorId $i}
function Out-VD($o){$j=$o|ConvertTo-Json -Depth 4 -Compress;[Convert]::ToBase64String([Text.Encoding]::UTF8.GetBytes([string]$j))}
function Get-VDNodes{if(Get-Command Get-ClusterNode -EA 0){@(Get-ClusterNode|?{$_.State -eq 'Up'}|%{$_.Name})}else{@($env:COMPUTERNAME)}}
function Test-VDMine($v){if(-not ($v.Notes -like '{*')){return $false};try{$n=$v.Notes|ConvertFrom-Json}catch{return $false};$null -ne $n.virtdrivers}
function Get-VDVM($id){$v=Get-VM -ComputerName (Get-VDNodes) -Id $id -EA 0;if(-not $v -or (-not $a.any -and -not (Test-VDMine $v))){Fail "Hyper-V was unable to find a virtual machine with ID $id." ObjectNotFound VDVMNotFound};$v}
function Get-VDInfo($vms){$h=@{};$vms|Group-Object ComputerName|%{$p=@($_.Group.HardDrives.Path|?{$_});if($p.Count){Get-VHD -ComputerName $_.Name -Path $p|%{$h[$_.Path]=$_}}};foreach($v in $vms){[pscustomobject]@{Id=[string]$v.Id;Name=$v.Name;State=$v.State;Cpu=$v.ProcessorCount;Mem=$v.MemoryStartup;Host=$v.ComputerName;Notes=$v.Notes;Clustered=$v.IsClustered;Disks=@($v.HardDrives.Path|?{$_}|%{$d=$h[$_];[pscustomobject]@{Path=$_;Size=$d.Size;Type=$d.VhdType;Format=$d.VhdFormat}});Nics=@($v.NetworkAdapters|Select-Object 'Id','SwitchName','MacAddress','IPAddresses')}}}
function Get-VDFresh($v){Get-VM -ComputerName $v.ComputerName -Id $v.Id}
$vm=Get-VDVM $a.id
Suspend-VM -VM $vm
Out-VD @(Get-VDInfo @(Get-VDFresh $vm))
