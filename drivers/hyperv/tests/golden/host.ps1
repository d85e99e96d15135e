$ErrorActionPreference='Stop';$ProgressPreference='SilentlyContinue'
function Fail($m,$c,$i){Write-Error -Message $m -Category $c -ErrorId $i}
function Out-VD($o){$j=$o|ConvertTo-Json -Depth 4 -Compress;[Convert]::ToBase64String([Text.Encoding]::UTF8.GetBytes([string]$j))}
function Test-VDNode($x){if(-not $x){return};$k=if(Get-Command Get-ClusterNode -EA 0){@(Get-ClusterNode|%{$_.Name})}else{@($env:COMPUTERNAME)}
if(-not ($k -contains $x)){Fail "No node named $x in this cluster." ObjectNotFound VDNoSuchNode}}
Test-VDNode $a.node;$n=if($a.node){$a.node}else{$env:COMPUTERNAME}
$h=Get-VMHost -ComputerName $n
$r=@(Get-VM -ComputerName $n|?{$_.State -eq 'Running' -or $_.State -eq 'Paused'})
$c=($r|Measure-Object -Property ProcessorCount -Sum).Sum;$m=($r|Measure-Object -Property MemoryStartup -Sum).Sum
$v=Get-Volume -FilePath $a.path
Out-VD ([pscustomobject]@{Name=$h.ComputerName;Cpu=$h.LogicalProcessorCount;Mem=$h.MemoryCapacity;CpuUsed=[int]$c;MemUsed=[long]$m;DiskSize=$v.Size;DiskFree=$v.SizeRemaining;Ver=(Get-CimInstance -ClassName Win32_OperatingSystem -ComputerName $n).Version})
