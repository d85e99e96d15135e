$ErrorActionPreference='Stop';$ProgressPreference='SilentlyContinue'
function Fail($m,$c,$i){Write-Error -Message $m -Category $c -ErrorId $i}
function Out-VD($o){$j=$o|ConvertTo-Json -Depth 4 -Compress;[Convert]::ToBase64String([Text.Encoding]::UTF8.GetBytes([string]$j))}
function Get-VDNodes{if(Get-Command Get-ClusterNode -EA 0){@(Get-ClusterNode|?{$_.State -eq 'Up'}|%{$_.Name})}else{@($env:COMPUTERNAME)}}
$vms=@(Get-VM -ComputerName (Get-VDNodes)|?{$_.Notes -and $_.Notes.Contains($a.token)})
foreach($vm in $vms){if($vm.IsClustered){Get-ClusterGroup -Name ([string]$vm.Id) -EA 0|Remove-ClusterGroup -RemoveResources -Force}
if($vm.State -ne 'Off'){Stop-VM -VM $vm -TurnOff -Force -EA 0};Remove-VM -VM $vm -Force}
if(Test-Path -LiteralPath $a.dir){Remove-Item -LiteralPath $a.dir -Recurse -Force}
Out-VD @($vms|%{[string]$_.Id})
