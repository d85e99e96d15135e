$ErrorActionPreference='Stop';$ProgressPreference='SilentlyContinue'
function Fail($m,$c,$i){Write-Error -Message $m -Category $c -ErrorId $i}
function Out-VD($o){$j=$o|ConvertTo-Json -Depth 4 -Compress;[Convert]::ToBase64String([Text.Encoding]::UTF8.GetBytes([string]$j))}
function Get-VDNodes{if(Get-Command Get-ClusterNode -EA 0){@(Get-ClusterNode|?{$_.State -eq 'Up'}|%{$_.Name})}else{@($env:COMPUTERNAME)}}
function Get-VDInfo($vms){$h=@{};$vms|Group-Object ComputerName|%{$p=@($_.Group.HardDrives.Path|?{$_});if($p.Count){Get-VHD -ComputerName $_.Name -Path $p|%{$h[$_.Path]=$_}}};foreach($v in $vms){[pscustomobject]@{Id=[string]$v.Id;Name=$v.Name;State=$v.State;Cpu=$v.ProcessorCount;Mem=$v.MemoryStartup;Host=$v.ComputerName;Notes=$v.Notes;Clustered=$v.IsClustered;Disks=@($v.HardDrives.Path|?{$_}|%{$d=$h[$_];[pscustomobject]@{Path=$_;Size=$d.Size;Type=$d.VhdType;Format=$d.VhdFormat}});Nics=@($v.NetworkAdapters|Select-Object 'Id','SwitchName','MacAddress','IPAddresses')}}}
Out-VD @(Get-VDInfo @(Get-VM -ComputerName (Get-VDNodes)))
