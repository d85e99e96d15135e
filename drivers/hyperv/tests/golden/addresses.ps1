$ErrorActionPreference='Stop';$ProgressPreference='SilentlyContinue'
function Fail($m,$c,$i){Write-Error -Message $m -Category $c -ErrorId $i}
function Out-VD($o){$j=$o|ConvertTo-Json -Depth 4 -Compress;[Convert]::ToBase64String([Text.Encoding]::UTF8.GetBytes([string]$j))}
function Get-VDNodes{if(Get-Command Get-ClusterNode -EA 0){@(Get-ClusterNode|?{$_.State -eq 'Up'}|%{$_.Name})}else{@($env:COMPUTERNAME)}}
function Test-VDMine($v){if(-not ($v.Notes -like '{*')){return $false};try{$n=$v.Notes|ConvertFrom-Json}catch{return $false};$null -ne $n.virtdrivers}
function Get-VDVM($id){$v=Get-VM -ComputerName (Get-VDNodes) -Id $id -EA 0;if(-not $v -or (-not $a.any -and -not (Test-VDMine $v))){Fail "Hyper-V was unable to find a virtual machine with ID $id." ObjectNotFound VDVMNotFound};$v}
$vm=Get-VDVM $a.id
$k=@(Get-VMIntegrationService -VM $vm|?{$_.Name -eq 'Key-Value Pair Exchange'})
Out-VD @(Get-VMNetworkAdapter -VM $vm|%{[pscustomobject]@{MacAddress=$_.MacAddress;IPAddresses=$_.IPAddresses;Kvp=($k.Count -gt 0 -and $k[0].Enabled)}})
