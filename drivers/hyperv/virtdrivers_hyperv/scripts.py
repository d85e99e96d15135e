"""The fixed PowerShell scripts the driver runs, one per operation.

No user value is ever spliced into script text. Every script starts with the same
line that decodes one base64 argument (UTF-8 JSON) into ``$a``; base64's alphabet
cannot close the single-quoted literal that carries it, so a VM called
``x'; Remove-VM *`` is only ever data. The rest of each script is a constant,
pinned by golden tests and recognised by the simulator by its SHA-256.

Output is returned the same way in reverse: ``ConvertTo-Json`` text, base64-encoded
so that the shell's OEM code page cannot mangle non-ASCII names. The JSON keeps
every Windows PowerShell 5.1 quirk (enums as integers, one object instead of a
one-element array, ``\\/Date(ms)\\/``), which :mod:`virtdrivers_hyperv.mapping` undoes.

Each script must stay well under the 8,191-character cmd.exe command line once
encoded (UTF-16LE then base64 grows it about 2.67 times); :func:`command_line`
refuses anything longer before it is sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

__all__ = [
    "CMD_LIMIT",
    "COMPLETE_MARKER",
    "DATA_PREFIX",
    "DATA_SUFFIX",
    "ROOT_FILE",
    "SCRIPTS",
    "SEED_BYTES",
    "SEED_FILE",
    "SEED_LABEL",
    "STDIN_LINE",
    "TOKEN_DIR_PREFIX",
    "ScriptTooLong",
    "body_digest",
    "command_line",
    "render",
    "render_stdin",
    "split_script",
]

#: cmd.exe refuses longer command lines ("The command line is too long.").
CMD_LIMIT = 8191

DATA_PREFIX = "$a=[Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('"
DATA_SUFFIX = "'))|ConvertFrom-Json\n"
#: Arguments too large for the command line come on stdin (WinRM Send), as Ansible's bootstrap does.
# ASSUMPTION: in ``powershell -encodedcommand`` run by WinRM, ``$input`` enumerates the lines sent to stdin.
STDIN_LINE = (
    "$a=[Text.Encoding]::UTF8.GetString([Convert]::FromBase64String((@($input) -join '').Trim()))|ConvertFrom-Json\n"
)


class ScriptTooLong(ValueError):
    """A rendered command line would exceed the cmd.exe limit."""


# -- shared snippets (constants; composed into each operation's body) ------------------------

_PRELUDE = (
    "$ErrorActionPreference='Stop';$ProgressPreference='SilentlyContinue'\n"
    "function Fail($m,$c,$i){Write-Error -Message $m -Category $c -ErrorId $i}\n"
)

_OUT = (
    "function Out-VD($o){$j=$o|ConvertTo-Json -Depth 4 -Compress;"
    "[Convert]::ToBase64String([Text.Encoding]::UTF8.GetBytes([string]$j))}\n"
)

# Up cluster nodes, or this host alone when the FailoverClusters module is absent.
_NODES = (
    "function Get-VDNodes{if(Get-Command Get-ClusterNode -EA 0)"
    "{@(Get-ClusterNode|?{$_.State -eq 'Up'}|%{$_.Name})}else{@($env:COMPUTERNAME)}}\n"
)

# Find one VM by id on any node; a typed ObjectNotFound error when it is not there, or when it is
# not ours (its Notes lack the virtdrivers marker) unless $a.any says so (adopt): a pet is never
# started, stopped or deleted by an operation that was meant for a managed instance.
_FIND = (
    "function Test-VDMine($v){if(-not ($v.Notes -like '{*')){return $false};"
    "try{$n=$v.Notes|ConvertFrom-Json}catch{return $false};$null -ne $n.virtdrivers}\n"
    "function Get-VDVM($id){$v=Get-VM -ComputerName (Get-VDNodes) -Id $id -EA 0;"
    "if(-not $v -or (-not $a.any -and -not (Test-VDMine $v))){"
    'Fail "Hyper-V was unable to find a virtual machine with ID $id." ObjectNotFound VDVMNotFound};$v}\n'
)

# Projection of VMs with their disks and NICs; one Get-VHD call per node for the disks of its VMs: on shared
# storage a VHD in use by a VM can be read only from the host running it (Get-VHD's documentation).
_INFO = (
    "function Get-VDInfo($vms){$h=@{};$vms|Group-Object ComputerName|%{$p=@($_.Group.HardDrives.Path|?{$_});"
    "if($p.Count){Get-VHD -ComputerName $_.Name -Path $p|%{$h[$_.Path]=$_}}};"
    "foreach($v in $vms){[pscustomobject]@{Id=[string]$v.Id;Name=$v.Name;State=$v.State;"
    "Cpu=$v.ProcessorCount;Mem=$v.MemoryStartup;Host=$v.ComputerName;Notes=$v.Notes;Clustered=$v.IsClustered;"
    "Disks=@($v.HardDrives.Path|?{$_}|%{$d=$h[$_];[pscustomobject]@{"
    "Path=$_;Size=$d.Size;Type=$d.VhdType;Format=$d.VhdFormat}});"
    "Nics=@($v.NetworkAdapters|Select-Object 'Id','SwitchName','MacAddress','IPAddresses')}}}\n"
)

_FRESH = "function Get-VDFresh($v){Get-VM -ComputerName $v.ComputerName -Id $v.Id}\n"

_SNAP = (
    "function Out-VDSnap($s){[pscustomobject]@{Id=[string]$s.Id;Name=$s.Name;Created=$s.CreationTime;State=$s.State}}\n"
)

_HA = (
    "function Out-VDHA($id){$g=$null;if(Get-Command Get-ClusterGroup -EA 0)"
    "{$g=Get-ClusterGroup -Name $id -EA 0};if($g){[pscustomobject]@{Enabled=$true;"
    "Owner=$g.OwnerNode.Name;State=$g.State;Priority=$g.Priority}}else{[pscustomobject]@{Enabled=$false}}}\n"
)

_TARGET = (
    "function Get-VDTarget($vm,$node){if($node){$n=Get-ClusterNode -Name $node;"
    "if($n.State -ne 'Up'){Fail \"Node $node is not up.\" InvalidOperation VDNodeDown};if($n.Name -eq"
    ' $vm.ComputerName){Fail "The virtual machine is on '
    '$node already." InvalidArgument VDSameNode};return $n.Name};'
    "$t=Get-VDNodes|?{$_ -ne $vm.ComputerName}|Select-Object -First 1;"
    "if(-not $t){Fail 'No other node is up.' InvalidOperation VDNoNode};$t}\n"
)


# A node name from the caller goes to -ComputerName only when it names a node of this cluster:
# anything else would make the host connect to whatever computer the string names.
_NODE = (
    "function Test-VDNode($x){if(-not $x){return};$k=if(Get-Command Get-ClusterNode -EA 0)"
    "{@(Get-ClusterNode|%{$_.Name})}else{@($env:COMPUTERNAME)}\n"
    'if(-not ($k -contains $x)){Fail "No node named $x in this cluster." ObjectNotFound VDNoSuchNode}}\n'
)

#: Prefix of the folder each create makes for its disks: ``vd-`` then the create's token.
TOKEN_DIR_PREFIX = "vd-vdc1-"
#: File a create's last step writes into its folder: from then on nothing in it is a leftover.
COMPLETE_MARKER = "vd-complete"

# Folders (lower case) that hold a disk of any of $vms: nothing in them is ever reaped.
_USED = (
    "function Get-VDUsed($vms){$u=@{};foreach($v in $vms){foreach($d in $v.HardDrives){if($d.Path)"
    "{$u[(Split-Path -Parent $d.Path).ToLowerInvariant()]=1}}};$u}\n"
)

# Remove a VM (role, saved state, checkpoints, record, disk files), then each folder of its disks
# that this driver made (``vd-*``) once nothing but the completion marker is left in it.
_REMOVE_VM = (
    "function Remove-VDVM($v){$p=@($v.HardDrives|?{$_.Path}|%{$_.Path})\n"
    "if($v.IsClustered){Get-ClusterGroup -Name ([string]$v.Id) -EA 0|Remove-ClusterGroup -RemoveResources -Force}\n"
    "if($v.State -eq 'Saved'){Remove-VMSavedState -VM $v}elseif($v.State -ne 'Off'){Stop-VM -VM $v -TurnOff -Force}\n"
    "Get-VMSnapshot -VM $v|Remove-VMSnapshot;Remove-VM -VM $v -Force\n"
    "foreach($f in $p){Remove-Item -LiteralPath $f -Force -EA 0}\n"
    "foreach($d in @($p|%{Split-Path -Parent $_}|Sort-Object -Unique)){if((Split-Path -Leaf $d) -like 'vd-*' -and "
    f"-not @(Get-ChildItem -LiteralPath $d -EA 0|?{{$_.Name -ne '{COMPLETE_MARKER}'}}).Count)"
    "{Remove-Item -LiteralPath $d -Recurse -Force -EA 0}}}\n"
)

# Remove a create's token folder only when it is one (by name), no VM refers to it ($u) and it is
# not marked complete.
_REMOVE = (
    _REMOVE_VM + "function Remove-VDDir($d,$u){if(-not $d -or -not (Test-Path -LiteralPath $d) -or "
    f"(Split-Path -Leaf $d) -notlike '{TOKEN_DIR_PREFIX}*' -or $u.ContainsKey($d.ToLowerInvariant()) -or "
    f"(Test-Path -LiteralPath (Join-Path $d '{COMPLETE_MARKER}'))){{return $false}}\n"
    "Remove-Item -LiteralPath $d -Recurse -Force;$true}\n"
)


def _vm_op(body: str, *extra: str) -> str:
    """A script acting on one VM found by ``$a.id`` and answering with its projection."""
    return (
        _PRELUDE
        + _OUT
        + _NODES
        + _FIND
        + _INFO
        + _FRESH
        + "".join(extra)
        + "$vm=Get-VDVM $a.id\n"
        + body
        + "Out-VD @(Get-VDInfo @(Get-VDFresh $vm))\n"
    )


_REQUIRE_RUNNING = (
    "if($vm.State -ne 'Running'){Fail \"The virtual machine is $($vm.State), it must be "
    'Running." InvalidOperation VDInvalidState}\n'
)

SCRIPTS: dict[str, str] = {
    "info": _PRELUDE + _OUT + "$c=$null;if(Get-Command Get-Cluster -EA 0){$c=(Get-Cluster).Name}\n"
    "Out-VD ([pscustomobject]@{Host=$env:COMPUTERNAME;Os=[Environment]::OSVersion.Version.ToString();"
    "Cluster=$c;Ps=$PSVersionTable.PSVersion.ToString()})\n",
    "nodes": _PRELUDE + _OUT + "if(Get-Command Get-ClusterNode -EA 0){"
    "Out-VD @(Get-ClusterNode|%{[pscustomobject]@{Name=$_.Name;State=$_.State}})}"
    "else{Out-VD @([pscustomobject]@{Name=$env:COMPUTERNAME;State=0})}\n",
    "aggregates": _PRELUDE + _OUT + "if(Get-Command Get-Cluster -EA 0){$c=Get-Cluster;"
    "Out-VD @([pscustomobject]@{Name=$c.Name;Nodes=@(Get-ClusterNode|%{$_.Name})})}"
    "else{Out-VD @()}\n",
    "list": _PRELUDE + _OUT + _NODES + _INFO + "Out-VD @(Get-VDInfo @(Get-VM -ComputerName (Get-VDNodes)))\n",
    "get": _vm_op(""),
    "host": _PRELUDE + _OUT + _NODE + "Test-VDNode $a.node;$n=if($a.node){$a.node}else{$env:COMPUTERNAME}\n"
    "$h=Get-VMHost -ComputerName $n\n"
    "$r=@(Get-VM -ComputerName $n|?{$_.State -eq 'Running' -or $_.State -eq 'Paused'})\n"
    "$c=($r|Measure-Object -Property ProcessorCount -Sum).Sum;$m=($r|Measure-Object -Property MemoryStartup -Sum).Sum\n"
    "$v=Get-Volume -FilePath $a.path\n"
    "Out-VD ([pscustomobject]@{Name=$h.ComputerName;Cpu=$h.LogicalProcessorCount;Mem=$h.MemoryCapacity;"
    "CpuUsed=[int]$c;MemUsed=[long]$m;DiskSize=$v.Size;DiskFree=$v.SizeRemaining;"
    "Ver=(Get-CimInstance -ClassName Win32_OperatingSystem -ComputerName $n).Version})\n",
    # The token travels first: the disk folder ($a.dir, named after it) and the disks in it are made
    # before New-VM, and the VM's Notes carry it from the cmdlet right after New-VM (which has no
    # -Notes parameter); the disks are attached after that.
    # It answers with the new VM's id only: the completion step answers with the whole projection.
    "create": _PRELUDE + _OUT + _NODES + _NODE + "$all=Get-VDNodes;Test-VDNode $a.node\n"
    "if(@(Get-VM -ComputerName $all|?{$_.Name -eq $a.name}).Count){Fail "
    '"A virtual machine named $($a.name) exists already." ResourceExists VDNameExists}\n'
    "$n=if($a.node){$a.node}else{$all|Sort-Object{(Get-VM -ComputerName $_|Measure-Object -Property "
    "MemoryStartup -Sum).Sum}|Select-Object -First 1}\n"
    "$vm=$null;$g=$null;$made=@()\n"
    "try{\n"
    "if($a.mk){New-Item -ItemType Directory -Path $a.dir -Force|Out-Null}\n"
    '$i=0;foreach($d in $a.disks){$f=Join-Path $a.dir "disk$i.vhdx";$i++\n'
    "if($d.fixed){New-VHD -ComputerName $n -Path $f -SizeBytes $d.size -Fixed|Out-Null}"
    "else{New-VHD -ComputerName $n -Path $f -SizeBytes $d.size -Dynamic|Out-Null};$made+=$f}\n"
    "$vm=New-VM -ComputerName $n -Name $a.name -Generation 2 -MemoryStartupBytes $a.mem -NoVHD\n"
    "Set-VM -VM $vm -Notes $a.notes\n"
    "Get-VMNetworkAdapter -VM $vm|Remove-VMNetworkAdapter\n"
    "foreach($x in $a.nics){Add-VMNetworkAdapter -VM $vm -SwitchName $x.sw -StaticMacAddress $x.mac}\n"
    "foreach($f in @($a.pre)+$made){Add-VMHardDiskDrive -VM $vm -Path $f}\n"
    "Set-VMProcessor -VM $vm -Count $a.cpu\n"
    "Set-VMMemory -VM $vm -DynamicMemoryEnabled $false -StartupBytes $a.mem\n"
    "if($a.ha){$g=Add-ClusterVirtualMachineRole -VMId $vm.Id -Name ([string]$vm.Id)}\n"
    "if($a.start){Start-VM -VM $vm}\n"
    "}catch{$e=$_\n"
    "if($g){Remove-ClusterGroup -InputObject $g -RemoveResources -Force -EA 0}\n"
    "if($vm){Stop-VM -VM $vm -TurnOff -Force -EA 0;Remove-VM -VM $vm -Force}\n"
    "if($a.mk){Remove-Item -LiteralPath $a.dir -Recurse -Force -EA 0}\n"
    "throw $e}\n"
    "Out-VD ([string]$vm.Id)\n",
    "destroy": _PRELUDE + _OUT + _NODES + _FIND + _REMOVE_VM + "Remove-VDVM (Get-VDVM $a.id)\nOut-VD @()\n",
    # After a create that was cut off (timeout, lost connection): remove what carries its token. The
    # folder goes only when no VM refers to it and it is not marked complete: if the create did finish
    # (its completion step ran before the connection was lost) its VM and disks are left alone.
    "purge": _PRELUDE
    + _OUT
    + _NODES
    + _USED
    + _REMOVE
    + "$all=Get-VDNodes;$vms=@(Get-VM -ComputerName $all|?{$_.Notes -and $_.Notes.Contains($a.token)})\n"
    "foreach($vm in $vms){Remove-VDVM $vm}\n"
    "Remove-VDDir $a.dir (Get-VDUsed @(Get-VM -ComputerName $all))|Out-Null\n"
    "Out-VD @($vms|%{[string]$_.Id})\n",
    # A create's last step: mark its folder complete (so a disk later detached and kept is never
    # taken for a leftover), then drop the token from the Notes, only if they are still the create's.
    "complete": _vm_op(
        "if($a.dir -and (Test-Path -LiteralPath $a.dir)){Set-Content -LiteralPath (Join-Path $a.dir "
        + f"'{COMPLETE_MARKER}') -Value $a.token}}\n"
        + "if($vm.Notes -ceq $a.was){Set-VM -VM $vm -Notes $a.notes;$vm=Get-VDFresh $vm}\n"
        + "if(-not $vm.ResourceMeteringEnabled){Enable-VMResourceMetering -VM $vm}\n"
    ),
    # What interrupted creates may have left: VMs whose Notes carry a create token, and the token
    # folders under $a.root with whether any VM refers to them and whether they are marked complete.
    # The driver decides which tokens are abandoned (it knows which processes are alive).
    "leftovers": _PRELUDE
    + _OUT
    + _NODES
    + _USED
    + "$vms=@(Get-VM -ComputerName (Get-VDNodes));$u=Get-VDUsed $vms;$dirs=@()\n"
    "if(Test-Path -LiteralPath $a.root){$dirs=@(Get-ChildItem -LiteralPath $a.root -Directory -Filter "
    + f"'{TOKEN_DIR_PREFIX}*'|%{{[pscustomobject]@{{Path=$_.FullName;"
    + "Used=$u.ContainsKey($_.FullName.ToLowerInvariant());"
    + f"Done=(Test-Path -LiteralPath (Join-Path $_.FullName '{COMPLETE_MARKER}'));"
    + "Files=@(Get-ChildItem -LiteralPath $_.FullName -File -Filter '*.vhdx'|%{$_.FullName})}})}\n"
    "$down=@();if(Get-Command Get-ClusterNode -EA 0){$down=@(Get-ClusterNode|?{$_.State -ne 'Up'}|%{$_.Name})}\n"
    "Out-VD ([pscustomobject]@{Vms=@($vms|?{$_.Notes -and $_.Notes.Contains('vdc1-')}|%{[pscustomobject]@{"
    "Id=[string]$_.Id;Name=$_.Name;Host=$_.ComputerName;Notes=$_.Notes}});Dirs=$dirs;Down=$down})\n",
    # Remove what the driver found abandoned, checking again on the host: a VM only while its Notes
    # still carry that token, a folder only while no VM refers to it and it is not marked complete.
    "reap": _PRELUDE + _OUT + _NODES + _USED + _REMOVE + "$all=Get-VDNodes;$gone=@()\n"
    "foreach($x in @($a.vms)){$v=Get-VM -ComputerName $all -Id $x.id -EA 0\n"
    "if($v -and $v.Notes -and $v.Notes.Contains($x.token)){Remove-VDVM $v;$gone+=[string]$v.Id}}\n"
    "$u=Get-VDUsed @(Get-VM -ComputerName $all)\n"
    "foreach($d in @($a.dirs)){if(Remove-VDDir $d $u){$gone+=$d}}\n"
    "Out-VD @($gone)\n",
    "start": _vm_op("if($vm.State -ne 'Running'){Start-VM -VM $vm}\n"),
    "stop": _vm_op(
        "if($vm.State -ne 'Off'){\n"
        "if($vm.State -eq 'Running' -and -not $a.force){$j=Stop-VM -VM $vm -Force -AsJob\n"
        "if(-not (Wait-Job -Job $j -Timeout $a.timeout)){Stop-Job -Job $j};Remove-Job -Job $j -Force\n"
        "$vm=Get-VDFresh $vm}\n"
        "if($vm.State -eq 'Saved'){Remove-VMSavedState -VM $vm}elseif($vm.State -ne 'Off')"
        "{Stop-VM -VM $vm -TurnOff -Force}}\n"
    ),
    # Soft: the guest gets $a.timeout seconds to shut down (as in stop), then it is turned off and started.
    "reboot": _vm_op(
        "if($a.hard){Restart-VM -VM $vm -Force}else{\n" + _REQUIRE_RUNNING + "$j=Stop-VM -VM $vm -Force -AsJob\n"
        "if(-not (Wait-Job -Job $j -Timeout $a.timeout)){Stop-Job -Job $j};Remove-Job -Job $j -Force\n"
        "$vm=Get-VDFresh $vm;if($vm.State -ne 'Off'){Stop-VM -VM $vm -TurnOff -Force}\n"
        "Start-VM -VM $vm}\n"
    ),
    "pause": _vm_op("Suspend-VM -VM $vm\n"),
    "unpause": _vm_op("Resume-VM -VM $vm\n"),
    "suspend": _vm_op("Save-VM -VM $vm\n"),
    "resume": _vm_op(
        "if($vm.State -ne 'Saved'){Fail \"The virtual machine is $($vm.State), it must be "
        'Saved." InvalidOperation VDInvalidState}\nStart-VM -VM $vm\n'
    ),
    "resize": _vm_op(
        "if($null -ne $a.cpu){Set-VMProcessor -VM $vm -Count $a.cpu}\n"
        "if($null -ne $a.mem){Set-VMMemory -VM $vm -StartupBytes $a.mem}\n"
    ),
    "attach": _PRELUDE + _OUT + _NODES + _FIND + "$vm=Get-VDVM $a.id\n"
    "$o=@($vm.HardDrives|?{$_.Path})\n"
    '$dir=if($o.Count){Split-Path -Parent $o[0].Path}else{Join-Path $a.root "vd-$($vm.Id)"}\n'
    "$a|Add-Member -NotePropertyName path -NotePropertyValue (Join-Path $dir $a.file)\n"
    "New-Item -ItemType Directory -Path $dir -Force|Out-Null\n"
    "if($a.fixed){New-VHD -ComputerName $vm.ComputerName -Path $a.path -SizeBytes $a.size -Fixed|Out-Null}"
    "else{New-VHD -ComputerName $vm.ComputerName -Path $a.path -SizeBytes $a.size -Dynamic|Out-Null}\n"
    "try{Add-VMHardDiskDrive -VM $vm -Path $a.path}catch{$e=$_;"
    "Remove-Item -LiteralPath $a.path -Force -EA 0;throw $e}\n"
    "if($a.notes){Set-VM -VM $vm -Notes $a.notes}\n"
    "$d=Get-VHD -ComputerName $vm.ComputerName -Path $a.path\n"
    "Out-VD ([pscustomobject]@{Path=$d.Path;Size=$d.Size;Type=$d.VhdType;Format=$d.VhdFormat})\n",
    "detach": _PRELUDE + _OUT + _NODES + _FIND + "$vm=Get-VDVM $a.id\n"
    "$d=@($vm.HardDrives|?{$_.Path -eq $a.path})\n"
    'if(-not $d.Count){Fail "The disk $($a.path) is not attached." ObjectNotFound VDDiskNotFound}\n'
    "Remove-VMHardDiskDrive -VMHardDiskDrive $d[0]\n"
    "if($a.delete){Remove-Item -LiteralPath $a.path -Force}\n"
    "Out-VD @()\n",
    "checkpoint": _PRELUDE + _OUT + _NODES + _FIND + _SNAP + "$vm=Get-VDVM $a.id\n"
    "if(@(Get-VMSnapshot -VM $vm|?{$_.Name -eq $a.name}).Count){Fail "
    '"A checkpoint named $($a.name) exists already." ResourceExists VDSnapExists}\n'
    "$t=$vm.CheckpointType\n"
    "Set-VM -VM $vm -CheckpointType $(if($a.memory){'Standard'}else{'Production'})\n"
    "try{$s=Checkpoint-VM -VM $vm -SnapshotName $a.name -Passthru}finally{Set-VM -VM $vm -CheckpointType $t}\n"
    "Out-VD (Out-VDSnap $s)\n",
    "snapshots": _PRELUDE + _OUT + _NODES + _FIND + _SNAP + "$vm=Get-VDVM $a.id\n"
    "Out-VD @(Get-VMSnapshot -VM $vm|%{Out-VDSnap $_})\n",
    "revert": _vm_op(
        "$s=@(Get-VMSnapshot -VM $vm|?{[string]$_.Id -eq $a.sid})\n"
        'if(-not $s.Count){Fail "Checkpoint $($a.sid) not found." ObjectNotFound VDSnapNotFound}\n'
        "if($vm.State -ne 'Off' -and $vm.State -ne 'Saved'){Stop-VM -VM $vm -TurnOff -Force}\n"
        "Restore-VMSnapshot -VMSnapshot $s[0] -Confirm:$false\n"
        "$vm=Get-VDFresh $vm;if($vm.State -eq 'Saved'){Start-VM -VM $vm}\n"
    ),
    "unsnapshot": _PRELUDE + _OUT + _NODES + _FIND + "$vm=Get-VDVM $a.id\n"
    "$s=@(Get-VMSnapshot -VM $vm|?{[string]$_.Id -eq $a.sid})\n"
    'if(-not $s.Count){Fail "Checkpoint $($a.sid) not found." ObjectNotFound VDSnapNotFound}\n'
    "Remove-VMSnapshot -VMSnapshot $s[0]\n"
    "Out-VD @()\n",
    "move": _vm_op(
        "$want=if($a.live){'Running'}else{'Off'}\n"
        'if($vm.State -ne $want){Fail "The virtual machine is $($vm.State), it must be $want."'
        " InvalidOperation VDInvalidState}\n"
        "$t=Get-VDTarget $vm $a.node\n"
        "if($vm.IsClustered){Move-ClusterVirtualMachineRole -Name ([string]$vm.Id) -Node $t "
        "-MigrationType $a.mt|Out-Null}else{Move-VM -VM $vm -DestinationHost $t}\n"
        "$vm=Get-VM -ComputerName $t -Id $vm.Id\n",
        _TARGET,
    ),
    "ha_set": _PRELUDE + _OUT + _NODES + _FIND + _HA + "$vm=Get-VDVM $a.id;$id=[string]$vm.Id\n"
    "$g=Get-ClusterGroup -Name $id -EA 0\n"
    "if($a.enabled){if(-not $g){$g=Add-ClusterVirtualMachineRole -VMId $vm.Id -Name $id};$g.Priority=$a.priority}"
    "elseif($g){Remove-ClusterGroup -InputObject $g -RemoveResources -Force}\n"
    "Out-VD (Out-VDHA $id)\n",
    "ha_get": _PRELUDE + _OUT + _NODES + _FIND + _HA + "$vm=Get-VDVM $a.id\nOut-VD (Out-VDHA ([string]$vm.Id))\n",
    "failover": _PRELUDE + _OUT + _NODES + _FIND + _HA + _TARGET + "$vm=Get-VDVM $a.id;$id=[string]$vm.Id\n"
    "$g=Get-ClusterGroup -Name $id -EA 0\n"
    "if(-not $g){Fail 'The virtual machine is not a clustered role.' InvalidOperation VDNotClustered}\n"
    "$t=Get-VDTarget $vm $a.node\n"
    "Move-ClusterGroup -InputObject $g -Node $t|Out-Null\n"
    "Out-VD (Out-VDHA $id)\n",
    "set_notes": _vm_op("Set-VM -VM $vm -Notes $a.notes\n"),
    # Rebuild on $a.node: move a stopped VM, or re-register the configuration of a VM whose node is down.
    "evacuate": _PRELUDE + _OUT + _NODES + _INFO + "$n=Get-ClusterNode -Name $a.node\n"
    "if($n.State -ne 'Up'){Fail \"Node $($a.node) is not up.\" InvalidOperation VDNodeDown};$t=$n.Name\n"
    "$vm=Get-VM -ComputerName (Get-VDNodes) -Id $a.id -EA 0\n"
    "if($vm){if($vm.State -ne 'Off'){Fail \"The virtual machine is $($vm.State) on a node that is up: migrate it.\" "
    "InvalidOperation VDInvalidState}\n"
    'if($vm.ComputerName -eq $t){Fail "The virtual machine is on $t already." InvalidArgument VDSameNode}\n'
    "if($vm.IsClustered){Move-ClusterGroup -Name ([string]$vm.Id) -Node $t|Out-Null}"
    "else{Move-VM -VM $vm -DestinationHost $t}}else{\n"
    '$p=Join-Path (Get-VMHost -ComputerName $t).VirtualMachinePath "Virtual Machines\\$($a.id).vmcx"\n'
    'if(-not (Test-Path -LiteralPath $p)){Fail "Hyper-V was unable to find a virtual machine with ID $($a.id)." '
    "ObjectNotFound VDVMNotFound}\n"
    "Import-VM -Path $p -Register -ComputerName $t|Out-Null}\n"
    "Out-VD @(Get-VDInfo @(Get-VM -ComputerName $t -Id $a.id))\n",
}


#: File names inside a create's token folder: the root disk made from an image, and the NoCloud seed.
ROOT_FILE = "root.vhdx"
SEED_FILE = "cidata.vhdx"
#: The seed's volume label, which cloud-init's NoCloud (and cloudbase-init's) datasource looks for.
SEED_LABEL = "cidata"
#: Size of the seed VHDX: small, and enough for FAT to format (3 MB is New-VHD's minimum).
SEED_BYTES = 32 * 1024 * 1024

# Workloads (contract 1.2): images are VHDX files in a library folder, networks are virtual switches,
# user data goes on a FAT volume labelled ``cidata`` in a small VHDX, addresses come from the KVP
# data exchange (Get-VMNetworkAdapter), metrics from resource metering (Measure-VM).
SCRIPTS.update(
    {
        "images": _PRELUDE + _OUT + "$f=@(Get-ChildItem -LiteralPath $a.lib -File -Filter '*.vhdx' -EA 0);$h=@{}\n"
        "if($f.Count){Get-VHD -Path @($f|%{$_.FullName})|%{$h[$_.Path]=$_}}\n"
        "Out-VD @($f|%{$d=$h[$_.FullName];[pscustomobject]@{Name=$_.Name;Path=$_.FullName;Len=$_.Length;"
        "Time=$_.LastWriteTimeUtc;Size=$d.Size;Type=$d.VhdType;Parent=$d.ParentPath}})\n",
        "networks": _PRELUDE + _OUT + "Out-VD @(Get-VMSwitch|%{[pscustomobject]@{Id=[string]$_.Id;Name=$_.Name;"
        "Type=$_.SwitchType}})\n",
        # Before create: resolve the image and the switches (read only, typed errors), then make the
        # root disk (a differencing child of the image, or a copy) and the seed in the create's folder.
        "prepare": _PRELUDE + _OUT + "$o=[pscustomobject]@{Image=$null;Root=$null;Seed=$null;Nets=@()}\n"
        "if($a.image){$i=@(Get-ChildItem -LiteralPath $a.lib -File -Filter '*.vhdx' -EA 0|"
        "?{$_.Name -eq $a.image -or $_.BaseName -eq $a.image})\n"
        'if($i.Count -ne 1){Fail "No image named $($a.image) in the library." InvalidArgument VDNoImage}\n'
        "$o.Image=$i[0].FullName}\n"
        "$w=@(Get-VMSwitch);$k=0\n"
        "foreach($x in @($a.nets)){$s=@($w|?{[string]$_.Id -eq $x -or $_.Name -eq $x})\n"
        'if($s.Count -ne 1){Fail "No virtual switch named $x for NIC $k." InvalidArgument VDNoSwitch}\n'
        "$o.Nets+=$s[0].Name;$k++}\n"
        "if($a.image -or $a.seed){try{New-Item -ItemType Directory -Path $a.dir -Force|Out-Null\n"
        + f"if($o.Image){{$o.Root=Join-Path $a.dir '{ROOT_FILE}'\n"
        "if($a.copy){Copy-Item -LiteralPath $o.Image -Destination $o.Root}"
        "else{New-VHD -Path $o.Root -ParentPath $o.Image -Differencing|Out-Null}}\n"
        + f"if($a.seed){{$o.Seed=Join-Path $a.dir '{SEED_FILE}'\n"
        + f"New-VHD -Path $o.Seed -SizeBytes {SEED_BYTES} -Dynamic|Out-Null\n"
        "$d=Mount-VHD -Path $o.Seed -Passthru\n"
        "try{$v=Initialize-Disk -Number $d.DiskNumber -PartitionStyle MBR -PassThru|"
        "New-Partition -UseMaximumSize -AssignDriveLetter|"
        + f"Format-Volume -FileSystem FAT -NewFileSystemLabel {SEED_LABEL} -Confirm:$false -Force\n"
        'foreach($x in @($a.seed)){[IO.File]::WriteAllBytes("$($v.DriveLetter):\\$($x.n)",'
        "[Convert]::FromBase64String($x.b))}}\n"
        "finally{Dismount-VHD -Path $o.Seed}}\n"
        "}catch{$e=$_;Remove-Item -LiteralPath $a.dir -Recurse -Force -EA 0;throw $e}}\n"
        "Out-VD $o\n",
        "nic_add": _PRELUDE + _OUT + _NODES + _FIND + "$vm=Get-VDVM $a.id\n"
        "$s=@(Get-VMSwitch|?{[string]$_.Id -eq $a.net -or $_.Name -eq $a.net})\n"
        'if($s.Count -ne 1){Fail "No virtual switch named $($a.net)." InvalidArgument VDNoSwitch}\n'
        "$n=Add-VMNetworkAdapter -VM $vm -SwitchName $s[0].Name -StaticMacAddress $a.mac -Passthru\n"
        "Out-VD ($n|Select-Object 'Id','SwitchName','MacAddress','IPAddresses')\n",
        "nic_remove": _PRELUDE + _OUT + _NODES + _FIND + "$vm=Get-VDVM $a.id\n"
        "$n=@(Get-VMNetworkAdapter -VM $vm|?{$_.Id -eq $a.nic})\n"
        'if(-not $n.Count){Fail "The network adapter $($a.nic) is not on this virtual machine." ObjectNotFound '
        "VDNicNotFound}\n"
        "Remove-VMNetworkAdapter -VMNetworkAdapter $n[0]\n"
        "Out-VD @()\n",
        # KVP: what the guest's data exchange service reported, per adapter; nothing while it is not running.
        "addresses": _PRELUDE + _OUT + _NODES + _FIND + "$vm=Get-VDVM $a.id\n"
        "$k=@(Get-VMIntegrationService -VM $vm|?{$_.Name -eq 'Key-Value Pair Exchange'})\n"
        "Out-VD @(Get-VMNetworkAdapter -VM $vm|%{[pscustomobject]@{MacAddress=$_.MacAddress;"
        "IPAddresses=$_.IPAddresses;Kvp=($k.Count -gt 0 -and $k[0].Enabled)}})\n",
        # Resource metering is enabled at create; a VM adopted without it is enabled on first use.
        "metrics": _PRELUDE + _OUT + _NODES + _FIND + "$vm=Get-VDVM $a.id\n"
        "if(-not $vm.ResourceMeteringEnabled){Enable-VMResourceMetering -VM $vm}\n"
        "$r=Measure-VM -VM $vm\n"
        "$c=@(Get-CimInstance -ClassName Win32_Processor -ComputerName $vm.ComputerName)[0].MaxClockSpeed\n"
        "$t=@($r.NetworkMeteredTrafficReport)\n"
        "Out-VD ([pscustomobject]@{Mhz=$r.AverageProcessorUsage;Clock=$c;Secs=$r.MeteringDuration.TotalSeconds;"
        "Ram=$r.AverageMemoryUsage;Read=$r.AggregatedDiskDataRead;Written=$r.AggregatedDiskDataWritten;"
        "In=($t|?{$_.Direction -eq 'Inbound'}|Measure-Object -Property TotalTraffic -Sum).Sum;"
        "Out=($t|?{$_.Direction -eq 'Outbound'}|Measure-Object -Property TotalTraffic -Sum).Sum})\n",
        # vmconnect's RDP endpoint on the VM's host: the listener port of the Hyper-V terminal service.
        "console": _PRELUDE + _OUT + _NODES + _FIND + "$vm=Get-VDVM $a.id\n"
        "$p=@(Get-CimInstance -Namespace root\\virtualization\\v2 -ClassName Msvm_TerminalServiceSettingData "
        "-ComputerName $vm.ComputerName)[0].ListenerPort\n"
        "Out-VD ([pscustomobject]@{Host=$vm.ComputerName;Port=$p})\n",
    }
)


def _encode(args: dict[str, Any]) -> str:
    data = json.dumps(args, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return base64.b64encode(data.encode("utf-8")).decode("ascii")


def render(name: str, args: dict[str, Any] | None = None) -> str:
    """The full script for operation ``name``: the data line, then the fixed body."""
    return DATA_PREFIX + _encode(args or {}) + DATA_SUFFIX + SCRIPTS[name]


def render_stdin(name: str, args: dict[str, Any] | None = None) -> tuple[str, bytes]:
    """The script for ``name`` reading its arguments from stdin, and the stdin bytes to send."""
    return STDIN_LINE + SCRIPTS[name], _encode(args or {}).encode("ascii") + b"\r\n"


def split_script(script: str, stdin: bytes | None = None) -> tuple[dict[str, Any], str]:
    """Inverse of :func:`render` (or :func:`render_stdin` with its ``stdin``): arguments and the fixed body."""
    if script.startswith(STDIN_LINE):
        if stdin is None:
            raise ValueError("the script reads its arguments from stdin")
        payload, body = "".join(stdin.decode("ascii").split()), script[len(STDIN_LINE) :]
    elif script.startswith(DATA_PREFIX):
        end = script.index(DATA_SUFFIX, len(DATA_PREFIX))
        payload, body = script[len(DATA_PREFIX) : end], script[end + len(DATA_SUFFIX) :]
    else:
        raise ValueError("not a virtdrivers script")
    args = json.loads(base64.b64decode(payload, validate=True).decode("utf-8"))
    if not isinstance(args, dict):
        raise ValueError("script arguments are not an object")
    return args, body


def body_digest(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def command_line(script: str) -> str:
    """The cmd.exe command line pywinrm sends for ``script``; ScriptTooLong past the limit."""
    encoded = base64.b64encode(script.encode("utf-16-le")).decode("ascii")
    line = f"powershell -encodedcommand {encoded}"
    if len(line) > CMD_LIMIT:
        raise ScriptTooLong(f"command line of {len(line)} characters exceeds the cmd.exe limit of {CMD_LIMIT}")
    return line
