$ErrorActionPreference='Stop';$ProgressPreference='SilentlyContinue'
function Fail($m,$c,$i){Write-Error -Message $m -Category $c -ErrorId $i}
function Out-VD($o){$j=$o|ConvertTo-Json -Depth 4 -Compress;[Convert]::ToBase64String([Text.Encoding]::UTF8.GetBytes([string]$j))}
$f=@(Get-ChildItem -LiteralPath $a.lib -File -Filter '*.vhdx' -EA 0);$h=@{}
if($f.Count){Get-VHD -Path @($f|%{$_.FullName})|%{$h[$_.Path]=$_}}
Out-VD @($f|%{$d=$h[$_.FullName];[pscustomobject]@{Name=$_.Name;Path=$_.FullName;Len=$_.Length;Time=$_.LastWriteTimeUtc;Size=$d.Size;Type=$d.VhdType;Parent=$d.ParentPath}})
