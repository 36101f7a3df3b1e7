# go1-navigation stand-in: checks the ROS master over the network every 2 s and says so.
while true; do
  if nc -w 1 "${ROS_MASTER_HOST:-ros-master}" 11311 </dev/null; then echo "go1-navigation: ros-master reachable"
  else echo "go1-navigation: ros-master NOT reachable"; fi
  sleep 2
done
