$ErrorActionPreference='Stop';$ProgressPreference='SilentlyContinue'
function Fail($m,$c,$i){Write-Error -Message $m -Category $c -ErrorId $i}
function Out-VD($o){$j=$o|ConvertTo-Json -Depth 4 -Compress;[Convert]::ToBase64String([Text.Encoding]::UTF8.GetBytes([string]$j))}
$o=[pscustomobject]@{Image=$null;Root=$null;Seed=$null;Nets=@()}
if($a.image){$i=@(Get-ChildItem -LiteralPath $a.lib -File -Filter '*.vhdx' -EA 0|?{$_.Name -eq $a.image -or $_.BaseName -eq $a.image})
if($i.Count -ne 1){Fail "No image named $($a.image) in the library." InvalidArgument VDNoImage}
$o.Image=$i[0].FullName}
$w=@(Get-VMSwitch);$k=0
foreach($x in @($a.nets)){$s=@($w|?{[string]$_.Id -eq $x -or $_.Name -eq $x})
if($s.Count -ne 1){Fail "No virtual switch named $x for NIC $k." InvalidArgument VDNoSwitch}
$o.Nets+=$s[0].Name;$k++}
if($a.image -or $a.seed){try{New-Item -ItemType Directory -Path $a.dir -Force|Out-Null
if($o.Image){$o.Root=Join-Path $a.dir 'root.vhdx'
if($a.copy){Copy-Item -LiteralPath $o.Image -Destination $o.Root}else{New-VHD -Path $o.Root -ParentPath $o.Image -Differencing|Out-Null}}
if($a.seed){$o.Seed=Join-Path $a.dir 'cidata.vhdx'
New-VHD -Path $o.Seed -SizeBytes 33554432 -Dynamic|Out-Null
$d=Mount-VHD -Path $o.Seed -Passthru
try{$v=Initialize-Disk -Number $d.DiskNumber -PartitionStyle MBR -PassThru|New-Partition -UseMaximumSize -AssignDriveLetter|Format-Volume -FileSystem FAT -NewFileSystemLabel cidata -Confirm:$false -Force
foreach($x in @($a.seed)){[IO.File]::WriteAllBytes("$($v.DriveLetter):\$($x.n)",[Convert]::FromBase64String($x.b))}}
finally{Dismount-VHD -Path $o.Seed}}
}catch{$e=$_;Remove-Item -LiteralPath $a.dir -Recurse -Force -EA 0;throw $e}}
Out-VD $o
