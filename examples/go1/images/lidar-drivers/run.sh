# lidar-drivers stand-in: checks the ROS master over the network every 2 s and says so.
while true; do
  if nc -w 1 "${ROS_MASTER_HOST:-ros-master}" 11311 </dev/null; then echo "lidar-drivers: ros-master reachable"
  else echo "lidar-drivers: ros-master NOT reachable"; fi
  sleep 2
done
