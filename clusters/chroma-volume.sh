#!/usr/bin/env bash
# Attach and mount the council's Chroma volume on this EC2 node (clusters/aws-gpu.yaml, head_setup_commands).
#
#   clusters/chroma-volume.sh [MOUNT_POINT]        # default /mnt/council-chroma
#
# The store lives on its own EBS volume (gp3, tag Name=$COUNCIL_CHROMA_VOLUME, default council-chroma), not on
# the head's root disk: the launcher terminates the head on `ray down` (cache_stopped_nodes: false) and the
# root disk goes with it. A volume attached with attach-volume keeps DeleteOnTermination=false, so it outlives
# every head; the next `ray up` attaches the same volume again. EBS, not EFS: Chroma keeps SQLite and HNSW
# files that want a local block device (SQLite's locking and latency over NFS), and EBS snapshots are the
# backup (README, "Backup and restore").
#
# First run: no volume has the tag, so one is created in this node's availability zone (size
# $COUNCIL_CHROMA_VOLUME_GB, default 100) and formatted. An EBS volume attaches only in its own zone: when the
# tagged volume is in another zone the script stops with the fix (the launcher starts the head in the first
# zone of provider.availability_zone, so keep the volume's zone first there). Needs the head's IAM role to
# allow ec2:DescribeVolumes/CreateVolume/AttachVolume/CreateTags (Ray's default head role has EC2 access).
set -euo pipefail

mount_point=${1:-/mnt/council-chroma}
name=${COUNCIL_CHROMA_VOLUME:-council-chroma}
size_gb=${COUNCIL_CHROMA_VOLUME_GB:-100}

if mountpoint -q "$mount_point"; then
  echo "chroma-volume.sh: $mount_point is already mounted"
  exit 0
fi

imds_token=$(curl -sf -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 300" http://169.254.169.254/latest/api/token)
imds() { curl -sf -H "X-aws-ec2-metadata-token: $imds_token" "http://169.254.169.254/latest/meta-data/$1"; }
instance=$(imds instance-id)
zone=$(imds placement/availability-zone)
export AWS_DEFAULT_REGION=${zone%?}

read -r volume volume_zone state attached_to < <(aws ec2 describe-volumes \
  --filters "Name=tag:Name,Values=$name" \
  --query 'Volumes[0].[VolumeId,AvailabilityZone,State,Attachments[0].InstanceId]' --output text)
if [[ "$volume" == "None" ]]; then
  volume=$(aws ec2 create-volume --availability-zone "$zone" --size "$size_gb" --volume-type gp3 --encrypted \
    --tag-specifications "ResourceType=volume,Tags=[{Key=Name,Value=$name}]" --query VolumeId --output text)
  aws ec2 wait volume-available --volume-ids "$volume"
  volume_zone=$zone state=available attached_to=None
  echo "chroma-volume.sh: created $volume ($size_gb GB) in $zone"
fi
if [[ "$volume_zone" != "$zone" ]]; then
  echo "chroma-volume.sh: volume $volume ($name) is in $volume_zone, this head in $zone: list $volume_zone first" \
       "in provider.availability_zone, or snapshot it and create the volume from the snapshot in $zone" >&2
  exit 1
fi
if [[ "$state" == "in-use" && "$attached_to" != "$instance" ]]; then
  echo "chroma-volume.sh: volume $volume is attached to $attached_to: one Chroma server per store" >&2
  exit 1
fi
if [[ "$attached_to" != "$instance" ]]; then
  aws ec2 attach-volume --volume-id "$volume" --instance-id "$instance" --device /dev/sdf > /dev/null
  aws ec2 wait volume-in-use --volume-ids "$volume"
fi

# Nitro instances show EBS volumes as NVMe devices whose serial is the volume id without its dash.
device=/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_${volume/-/}
for _ in $(seq 60); do [[ -e "$device" ]] && break; sleep 1; done
[[ -e "$device" ]] || { echo "chroma-volume.sh: $volume attached but $device did not appear" >&2; exit 1; }
# Format a new volume only: a volume that has a filesystem is never formatted again.
sudo blkid "$device" > /dev/null || sudo mkfs.ext4 -q -L council-chroma "$device"
sudo mkdir -p "$mount_point"
uuid=$(sudo blkid -s UUID -o value "$device")
grep -q "$uuid" /etc/fstab || echo "UUID=$uuid $mount_point ext4 defaults,nofail 0 2" | sudo tee -a /etc/fstab > /dev/null
sudo mount "$mount_point"
sudo mkdir -p "$mount_point/data"
sudo chown -R "$(id -un):$(id -gn)" "$mount_point/data"
echo "chroma-volume.sh: $volume mounted at $mount_point"
