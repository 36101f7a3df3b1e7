# A ROS master stand-in: answers on 11311 like roscore's XML-RPC port.
mkdir -p /www && echo "ros-master up" > /www/index.html
exec httpd -f -p 11311 -h /www
