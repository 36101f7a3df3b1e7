# rviz-vnc stand-in: a web page on 6080 (noVNC's port) and a ROS master check.
mkdir -p /www && echo "rviz" > /www/index.html
httpd -p 6080 -h /www
while true; do
  nc -w 1 "${ROS_MASTER_HOST:-ros-master}" 11311 </dev/null && echo "rviz-vnc: ros-master reachable"
  sleep 2
done
